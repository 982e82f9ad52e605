"""Shared pieces of the demo DNS tests: the demo zone, ``dig``, a server in a thread."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from atlas.demo.dns_server import DnsServer
from atlas.demo.zone import DemoZone

T = TypeVar("T")

DIG = shutil.which("dig") or "/usr/bin/dig"
ORIGIN = "support.example.test"
US_SOURCE = "127.10.0.5"
ASIA_SOURCE = "127.20.0.9"
OTHER_SOURCE = "127.0.0.1"
US_TRAFFIC = {"127.0.2.1", "127.0.2.2"}
ASIA_TRAFFIC = {"127.0.3.1", "127.0.3.2"}
MANY = [f"127.0.9.{i}" for i in range(1, 51)]  # 50 A records: ~840 bytes, over 512

US_SRV = {
    (10, 60, 8443, "us-traffic1.support.example.test."),
    (10, 40, 8443, "us-traffic2.support.example.test."),
    (20, 0, 8443, "asia-traffic1.support.example.test."),
}
ASIA_SRV = {
    (10, 50, 8443, "asia-traffic1.support.example.test."),
    (10, 50, 8443, "asia-traffic2.support.example.test."),
    (20, 0, 8443, "us-traffic1.support.example.test."),
}


def _srv(records: set[tuple[int, int, int, str]]) -> list[dict[str, Any]]:
    return [
        {"priority": p, "weight": w, "port": port, "target": t.removesuffix(f".{ORIGIN}.")}
        for p, w, port, t in sorted(records)
    ]


def demo_zone_dict() -> dict[str, Any]:
    """A zone shaped like the demo's: two masters, US and Asia traffic nodes."""
    return {
        "origin": ORIGIN,
        "ttl": 5,
        "records": {
            "@": {"A": ["127.0.1.1"]},
            "master1": {"A": ["127.0.1.1"]},
            "master2": {"A": ["127.0.1.2"]},
            "us-traffic1": {"A": ["127.0.2.1"], "AAAA": ["fd00::2:1"]},
            "us-traffic2": {"A": ["127.0.2.2"]},
            "asia-traffic1": {"A": ["127.0.3.1"]},
            "asia-traffic2": {"A": ["127.0.3.2"]},
            "_atlas._tcp": {"SRV": _srv(US_SRV)},
            "many": {"A": MANY},
        },
        "client_networks": {"us": ["127.10.0.0/16"], "asia": ["127.20.0.0/255.255.0.0"]},
        "default_region": None,
        "geo_records": {
            "traffic": {"us": {"A": sorted(US_TRAFFIC)}, "asia": {"A": sorted(ASIA_TRAFFIC)}},
            "_geo._tcp": {"us": {"SRV": _srv(US_SRV)}, "asia": {"SRV": _srv(ASIA_SRV)}},
        },
    }


def demo_zone(**changes: Any) -> DemoZone:
    return DemoZone.from_dict({**demo_zone_dict(), **changes})


def dig(port: int, *args: str, host: str = "127.0.0.1") -> str:
    """Run Debian's ``dig`` against ``host:port``; its standard output."""
    done = subprocess.run(
        [DIG, f"@{host}", "-p", str(port), "+time=2", "+tries=2", *args],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 0, f"dig {args} failed: {done.stdout}{done.stderr}"
    return done.stdout


def dig_short(port: int, *args: str) -> list[str]:
    return [line for line in dig(port, *args, "+short").splitlines() if line.strip()]


def dig_header(port: int, *args: str) -> tuple[str, set[str], str]:
    """``(status, flags, output)`` of a query, e.g. ``("NXDOMAIN", {"qr", "aa"}, …)``."""
    out = dig(port, *args, "+noall", "+comments", "+answer", "+authority", "+additional")
    status = re.search(r"status: (\w+)", out)
    flags = re.search(r";; flags: ([a-z ]*);", out)
    assert status and flags, out
    return status.group(1), set(flags.group(1).split()), out


def parse_srv(lines: list[str]) -> set[tuple[int, int, int, str]]:
    out = set()
    for line in lines:
        prio, weight, port, target = line.split()
        out.add((int(prio), int(weight), int(port), target))
    return out


class ThreadedDnsServer:
    """A :class:`DnsServer` on its own event loop in a thread, so tests may block (dig)."""

    def __init__(self, zone: DemoZone, host: str = "127.0.0.1", **kw: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = DnsServer(zone, host, 0, **kw)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.port

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=15)

    def __enter__(self) -> ThreadedDnsServer:
        self.thread.start()
        self.call(self.server.start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self.server.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=15)
            self.loop.close()
