"""A real DNS server for tests: Debian's dnsmasq on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import dns.message
import dns.query
import dns.rdatatype

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def free_udp_tcp_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host``."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((host, 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


@contextmanager
def dnsmasq(args: list[str], host: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
    """Run dnsmasq with extra ``args`` (``--host-record=…``, ``--srv-host=…``); yield host, port.

    Waits (with a deadline) until it answers a query, and always stops it.
    """
    port = free_udp_tcp_port(host)
    cmd = [
        DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", f"--port={port}",
        f"--listen-address={host}", "--bind-interfaces", "--no-resolv", "--no-hosts",
        "--pid-file=", "--user=root", "--log-facility=-", *args,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"dnsmasq exited: {err}")
            try:
                q = dns.message.make_query("probe.invalid.", dns.rdatatype.A)
                dns.query.udp(q, host, port=port, timeout=0.2)
                break
            except (dns.exception.Timeout, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError("dnsmasq did not answer within 10 s") from None
        yield host, port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
