"""Synthetic support sessions: ``atlas demo --sessions N``.

N customer/representative pairs stream test-pattern screens through the cluster, as
real client processes an operator could start by hand (``python -m atlas rep …
--accept-next`` and ``python -m atlas customer …``). Pairs alternate: the first pair's
representative is in the first region helping a customer in the second, the next pair
the other way round, so both regions carry sessions and every session crosses regions
(guide, "Run Test Connections": the representative's console connects to the customer's
home traffic node to watch the screen).

Each pair has its own representative account (``sim-rep1``, ``sim-rep2``, …, created
with the demo's first one, so data sync carries them) and gets a session key from the
REST API for that representative's personal queue (``rep_username:NAME``), so a pair
never takes another pair's customer. Clients connect from their region's client network
(``--source-address``), report its timezone (``--tz-offset``), trust the demo CA and
resolve through the demo DNS server, at a low frame rate and a small picture so two cores
cope. A session lasts :data:`SESSION_SECONDS` (``--session-length``); when it ends (or a
client fails) the pair is started again after a short pause, so new sessions follow the
method in force.

The planning (:func:`plan_pairs`, :func:`rep_argv`, :func:`customer_argv`) is pure;
:class:`PairRunner` runs one pair's processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atlas.demo import processes
from atlas.demo.errors import DemoError
from atlas.demo.layout import DemoLayout, Region
from atlas.demo.processes import Child

REP_USERNAME_PREFIX = "sim-rep"
SESSION_REP_DISPLAY_NAME = "Simulated Representative {index}"
MAX_SESSIONS = 50
CUSTOMER_HOST_BASE = 256  # customer of pair i: the client network's address + 256 + i
REP_HOST_BASE = 512  # its representative: + 512 + i (x.y.1.i and x.y.2.i in a /16)
FPS = 2.0
SIZE = "320x180"
SESSION_SECONDS = 300.0
MIN_SESSION_SECONDS = 10.0
RESTART_PAUSE = 3.0  # after a session; doubled after each round in which none started
MAX_RESTART_PAUSE = 30.0
END_GRACE = 10.0  # after one client exits, how long the other may take to follow
CLIENT_STOP_TIMEOUT = 5.0
ENV_PASSWORD = "ATLAS_PASSWORD"  # noqa: S105 - the variable's name (atlas rep)
ENV_SESSION_KEY = "ATLAS_SESSION_KEY"  # atlas customer

Say = Callable[[str], None]


def rep_username(index: int) -> str:
    """The representative account of pair ``index`` (1-based)."""
    return f"{REP_USERNAME_PREFIX}{index}"


@dataclass(frozen=True)
class SessionClient:
    """Where one synthetic client runs: its region, source address, timezone, hostname."""

    region: str
    source_address: str
    tz_offset: str
    hostname: str


@dataclass(frozen=True)
class SessionPair:
    index: int  # 1-based
    rep_username: str
    representative: SessionClient
    customer: SessionClient

    @property
    def name(self) -> str:
        return f"pair{self.index}"

    @property
    def queue_id(self) -> str:
        """The representative's personal queue, where the pair's session key leads."""
        return f"rep_username:{self.rep_username}"


def _client(region: Region, host: int, hostname: str) -> SessionClient:
    network = ipaddress.ip_network(region.client_networks[0])
    if host >= network.num_addresses - 1:
        raise ValueError(f"region {region.key}: {network} has no host {host} for {hostname}")
    address = network.network_address + host
    return SessionClient(region.key, str(address), region.timezone, hostname)


def plan_pairs(layout: DemoLayout, count: int) -> tuple[SessionPair, ...]:
    """``count`` pairs, representatives and customers of alternating regions."""
    if count < 0 or count > MAX_SESSIONS:
        raise ValueError(f"--sessions {count}: at most {MAX_SESSIONS}")
    regions = layout.regions
    pairs: list[SessionPair] = []
    for i in range(count):
        index = i + 1
        rep_region = regions[i % len(regions)]
        customer_region = regions[(i + 1) % len(regions)]
        pairs.append(SessionPair(
            index=index,
            rep_username=rep_username(index),
            representative=_client(rep_region, REP_HOST_BASE + index,
                                   f"sim-rep{index}-{rep_region.key}"),
            customer=_client(customer_region, CUSTOMER_HOST_BASE + index,
                             f"sim-customer{index}-{customer_region.key}"),
        ))
    return tuple(pairs)


@dataclass(frozen=True)
class SessionSite:
    """What every synthetic client is told about the site."""

    url: str
    ca_file: str
    dns: str


def _client_args(client: SessionClient, site: SessionSite) -> list[str]:
    return ["--site", site.url, "--source-address", client.source_address,
            "--tz-offset", client.tz_offset, "--hostname", client.hostname,
            "--ca-file", site.ca_file, "--dns", site.dns, "--fps", f"{FPS:g}", "--size", SIZE,
            "--json", "--no-report-frames"]


def rep_argv(pair: SessionPair, site: SessionSite, python: str = sys.executable) -> list[str]:
    """``atlas rep``, taking the next session of its personal queue only (a customer a
    person sends to the general queue is left to people; password from the environment,
    ``ATLAS_PASSWORD``)."""
    return [python, "-m", "atlas", "rep", "--user", pair.rep_username, "--accept-next",
            "--queue", "personal",
            "--no-live", *_client_args(pair.representative, site)]


def customer_argv(pair: SessionPair, site: SessionSite, duration: float,
                  python: str = sys.executable) -> list[str]:
    """``atlas customer`` sharing a test pattern for ``duration`` seconds (the session key
    from the environment, ``ATLAS_SESSION_KEY``)."""
    return [python, "-m", "atlas", "customer", "--duration", f"{duration:g}",
            *_client_args(pair.customer, site)]


# ---- running a pair ---------------------------------------------------------------------------


class PairRunner:
    """Keeps one pair's session going: a session key, both clients, wait until the
    session ends, a pause, again. Cancelling it leaves its processes to the caller, who
    stops them with every other child of the demo."""

    def __init__(self, pair: SessionPair, site: SessionSite, password: str, *,
                 new_key: Callable[[str], Awaitable[str]], log_dir: Path,
                 env: dict[str, str], on_change: Callable[[], None], say: Say,
                 session_seconds: float = SESSION_SECONDS) -> None:
        self.pair = pair
        self.session_seconds = session_seconds
        self.site = site
        self.password = password
        self.new_key = new_key
        self.log_dir = log_dir
        self.env = env
        self.on_change = on_change
        self.say = say
        self.state = "starting"  # starting, waiting, running, ended, restarting
        self.rep_node: str | None = None
        self.customer_node: str | None = None
        self.sessions = 0  # sessions that started
        self.error: str | None = None
        self.rep: Child | None = None
        self.customer: Child | None = None
        self._announced = False

    @property
    def rep_log(self) -> Path:
        return self.log_dir / f"{self.pair.name}-rep.log"

    @property
    def customer_log(self) -> Path:
        return self.log_dir / f"{self.pair.name}-customer.log"

    def children(self) -> list[Child]:
        return [c for c in (self.rep, self.customer) if c is not None]

    async def run(self) -> None:
        pause = RESTART_PAUSE
        while True:
            before = self.sessions
            self.state, self.rep_node, self.customer_node = "starting", None, None
            self._announced = False
            try:
                await self._session()
            except DemoError as exc:
                self.error = str(exc)
            await processes.stop_children([self.children()], timeout=CLIENT_STOP_TIMEOUT)
            worked = self.sessions > before
            pause = RESTART_PAUSE if worked else min(pause * 2, MAX_RESTART_PAUSE)
            self.state = "restarting"
            self.on_change()
            await asyncio.sleep(pause)

    async def _session(self) -> None:
        pair = self.pair
        key = await self.new_key(pair.queue_id)
        self.rep = Child(f"{pair.name}-rep", rep_argv(pair, self.site),
                         {**self.env, ENV_PASSWORD: self.password}, self.rep_log)
        self.customer = Child(f"{pair.name}-customer",
                              customer_argv(pair, self.site, self.session_seconds),
                              {**self.env, ENV_SESSION_KEY: key}, self.customer_log)
        for child, who in ((self.rep, "representative"), (self.customer, "customer")):
            await child.start(stdout_pipe=True)
            child.drain_stdout(functools.partial(self.on_line, who))
        self.on_change()
        waits = {asyncio.ensure_future(c.wait_exit()) for c in self.children()}
        try:
            _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if pending:  # the session ended for one: the other follows
                await asyncio.wait(pending, timeout=END_GRACE)
        finally:
            for w in waits:
                w.cancel()
        for child in self.children():
            if child.returncode not in (None, 0) and self.error is None:
                self.error = f"{child.name} exited with code {child.returncode} " \
                             f"(log: {child.log_file})"

    def on_line(self, who: str, line: bytes) -> None:
        """One line of a client's ``--json`` output."""
        if not line.startswith(b"{"):
            return
        try:
            event: dict[str, Any] = json.loads(line)
        except ValueError:
            return
        name = event.get("event")
        if name == "queued" and who == "customer":
            self.state = "waiting"
        elif name == "started":
            home = event.get("home_node") or {}
            node = str(home.get("name")) if home.get("name") else None
            if who == "customer":
                self.customer_node = node
                self.sessions += 1
                self.state = "running"
                self.error = None
            else:
                self.rep_node = node
            if self.customer_node and self.rep_node and not self._announced:
                self._announced = True
                p = self.pair
                self.say(f"{p.name}: session {self.sessions} running — customer "
                         f"({p.customer.region}) on {self.customer_node}, representative "
                         f"{p.rep_username} ({p.representative.region}) on {self.rep_node}")
        elif name == "ended":
            self.state = "ended"
        elif name == "failed":
            self.error = f"{who}: {event.get('error')}"


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the pair runners and wait until they have stopped."""
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t


__all__ = [
    "FPS",
    "MAX_SESSIONS",
    "MIN_SESSION_SECONDS",
    "REP_USERNAME_PREFIX",
    "SESSION_REP_DISPLAY_NAME",
    "SESSION_SECONDS",
    "SIZE",
    "PairRunner",
    "SessionClient",
    "SessionPair",
    "SessionSite",
    "cancel_all",
    "customer_argv",
    "plan_pairs",
    "rep_argv",
    "rep_username",
]
