"""Run ``atlas demo`` for the clients' cluster tests, and drive clients in it."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from atlas.node.datadir import DataDir
from atlas.store.api_accounts import Permission, create_account
from atlas.store.db import Database
from tests.support.nodes import _open

START_SECONDS = 120.0
US_CLIENT = "127.10.0.10"
ASIA_CLIENT = "127.20.0.5"


@dataclass
class Demo:
    root: Path
    state: dict[str, Any]
    proc: subprocess.Popen[bytes]
    # node name → (client id, client secret) of an API account on that node
    _accounts: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False)

    @property
    def site(self) -> str:
        return str(self.state["url"])

    @property
    def dns(self) -> str:
        return f"{self.state['dns']['host']}:{self.state['dns']['port']}"

    @property
    def ca_file(self) -> str:
        return str(self.state["ca_file"])

    def node(self, name: str) -> dict[str, Any]:
        return next(n for n in self.state["nodes"] if n["name"] == name)

    def region_nodes(self, region: str) -> set[str]:
        return set(self.state["regions"][region]["traffic_nodes"])

    def node_by_guid(self, guid: str) -> dict[str, Any]:
        return next(n for n in self.state["nodes"] if n["guid"] == guid)

    def refresh(self) -> None:
        self.state = json.loads((self.root / "demo.json").read_text())

    def _account(self, node: str) -> tuple[str, str]:
        """Credentials of an API account on ``node``: the demo's on master1; on another
        node a read-only account made on its database, as an operator would with
        ``atlas api-account create DATA_DIR`` (API accounts are not data-synced)."""
        if node == "master1":
            account = self.state["api_account"]
            return account["client_id"], account["client_secret"]
        if node not in self._accounts:
            db = Database(DataDir(Path(self.node(node)["data_dir"])).db_file)
            try:
                made = create_account(db, "cluster-test reader",
                                      frozenset({Permission.COMMAND_READ}))
            finally:
                db.close()
            self._accounts[node] = (made.account.client_id, made.client_secret)
        return self._accounts[node]

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None, *, node: str = "master1") -> bytes:
        """An API request to ``node`` (connecting to its listen address; TLS checks its
        public hostname — the site name for master1 — against the demo CA), with a
        bearer token of an API account on that node."""
        info = self.node(node)
        if node == "master1":
            host, port = str(self.state["site"]), int(self.state["port"])
        else:
            name, _, port_text = str(info["public"]).rpartition(":")
            host, port = name, int(port_text)
        ctx = ssl.create_default_context(cafile=self.ca_file)
        client_id, secret = self._account(node)
        basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
        req = urllib.request.Request(
            f"https://{host}:{port}/oauth2/token",
            data=b"grant_type=client_credentials", headers={"Authorization": f"Basic {basic}"})
        with _open(req, ctx, info["listen_ip"], port) as r:
            token = json.loads(r.read())["access_token"]
        data = None if body is None else json.dumps(body).encode()
        all_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
        if data is not None:
            all_headers["Content-Type"] = "application/json"
        req = urllib.request.Request(f"https://{host}:{port}{path}", data=data,
                                     headers=all_headers, method=method)
        with _open(req, ctx, info["listen_ip"], port) as r:
            return bytes(r.read())

    def command(self, node: str, action: str, **params: str) -> ET.Element:
        """A Command API action on ``node``, its XML reply with the namespace stripped
        (as BeyondTrust integrations parse it)."""
        query = urllib.parse.urlencode({"action": action, **params})
        root = ET.fromstring(self.request("GET", f"/api/command?{query}", node=node))  # noqa: S314 - our own demo
        for el in root.iter():
            el.tag = el.tag.rpartition("}")[2]
        return root

    def session_key(self, queue_id: str = "general") -> str:
        """From the Command API on the master (``generate_session_key``)."""
        query = urllib.parse.urlencode({"action": "generate_session_key", "type": "support",
                                        "queue_id": queue_id})
        xml = self.request("GET", f"/api/command?{query}").decode()
        return xml.split("<short_key>", 1)[1].split("</short_key>", 1)[0]

    def set_method(self, method: str) -> None:
        """Method for Choosing Traffic Nodes (the demo's names and addresses), then
        Sync Now."""
        selection = {**self.state["selection"], "method": method}
        self.request("PUT", "/api/v1/cluster/selection", selection, {"If-Match": "*"})
        self.request("POST", "/api/v1/cluster/sync")


def _port_free_everywhere(port: int, ips: list[str]) -> bool:
    for ip in ips:
        with socket.socket() as s:
            try:
                s.bind((ip, port))
            except OSError:
                return False
    return True


def _demo_port() -> int:
    ips = ["127.0.1.1", "127.0.1.2", "127.0.2.1", "127.0.2.2", "127.0.3.1", "127.0.3.2",
           "127.0.2.100", "127.0.3.100"]
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.1.1", 0))
            port = int(s.getsockname()[1])
        if _port_free_everywhere(port, ips):
            return port
    raise RuntimeError("no port free on every demo address")


@contextmanager
def running_demo(parent: Path, *args: str) -> Iterator[Demo]:
    """``atlas demo --headless`` in ``parent``, running until the block ends."""
    root = parent / "demo"
    log = parent / "demo.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "atlas", "demo", "--dir", str(root), "--headless",
             "--port", str(_demo_port()), "--dns-port", "0", *args],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + START_SECONDS
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"atlas demo exited:\n{log.read_text()[-3000:]}")
            state_file = root / "demo.json"
            if state_file.exists():
                try:
                    state = json.loads(state_file.read_text())
                except ValueError:
                    state = {}
                if state.get("state") == "running":
                    break
            time.sleep(0.2)
        else:
            pytest.fail(f"atlas demo not running after {START_SECONDS:g} s:\n"
                        f"{log.read_text()[-3000:]}")
        yield Demo(root, state, proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@contextmanager
def restarted_node(demo: Demo, name: str) -> Iterator[subprocess.Popen[bytes]]:
    """``atlas serve`` of the demo node ``name`` again (after it was killed), with the
    environment the demo gives its nodes; stopped when the block ends (``atlas demo``
    stops only the processes it started itself)."""
    info = demo.node(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["ATLAS_DNS"] = demo.dns
    if info.get("anycast_listen"):
        env["ATLAS_ANYCAST_LISTEN"] = str(info["anycast_listen"])
    log = Path(f"{info['log_file']}.restarted")
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "atlas", "serve", str(info["data_dir"]),
             "--log-level", "info"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def wait_healthy(demo: Demo, name: str, proc: subprocess.Popen[bytes],
                 timeout: float = 30.0) -> None:
    """Until node ``name`` answers ``/healthz`` over verified TLS."""
    info = demo.node(name)
    host, _, port_text = str(info["public"]).rpartition(":")
    ctx = ssl.create_default_context(cafile=demo.ca_file)
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        if proc.poll() is not None:
            log = Path(f"{info['log_file']}.restarted")
            raise AssertionError(f"{name} exited with {proc.returncode}:\n"
                                 f"{log.read_text(errors='replace')[-3000:]}")
        req = urllib.request.Request(f"https://{host}:{port_text}/healthz")
        try:
            with _open(req, ctx, info["listen_ip"], int(port_text)) as r:
                if json.loads(r.read()).get("name") == name:
                    return
        except (OSError, ValueError) as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} did not answer /healthz in {timeout:g} s: {last}")
        time.sleep(0.2)


def client(demo: Demo, command: str, source: str, tz: str, *args: str,
           env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    full_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "atlas", command, "--site", demo.site, "--ca-file", demo.ca_file,
         "--dns", demo.dns, "--source-address", source, "--tz-offset", tz, "--json", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)


def rep_env(demo: Demo) -> dict[str, str]:
    return {"ATLAS_PASSWORD": demo.state["representative"]["password"]}


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, list[dict[str, Any]], str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"timed out:\n{out[-4000:]}\n{err[-2000:]}") from None
    return proc.returncode, [json.loads(x) for x in out.splitlines() if x.startswith("{")], err


def read_until(proc: subprocess.Popen[str], done: Callable[[dict[str, Any]], bool]
               ) -> list[dict[str, Any]]:
    """The client's JSON events up to and including the first for which ``done`` is
    true (an assertion error if it exits first)."""
    assert proc.stdout is not None
    events: list[dict[str, Any]] = []
    while True:
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr is not None else ""
            raise AssertionError(f"the client exited early: {events[-20:]}\n{err[-2000:]}")
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        events.append(event)
        if done(event):
            return events


def of(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == name]
