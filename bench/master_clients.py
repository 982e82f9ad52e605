"""Online clients on one master: memory per client and control-message latency.

DESIGN.md §2: every online client holds one control connection (WebSocket over TLS) to
the primary master for as long as it is online. This measures what one idle client
costs the master and how fast the master answers a control message while thousands are
connected, against a baseline in the same run:

* **master** — a real node (``atlas.node.app.build_app``: broker, registry, control
  endpoint, every other feature) in its own process. Each client authenticates as a
  support customer with its own session key (hello → auth_customer → welcome →
  session_queued), then stays connected, idle.
* **baseline** — a bare aiohttp WebSocket echo server in its own process with the same
  TLS context and the same WebSocket settings (no compression, same maximum message size
  and heartbeat): the cost of the transport alone.

Clients run in this process, spread over many 127.x source addresses (no ephemeral port
exhaustion); ``RLIMIT_NOFILE`` is raised in both processes.

* memory per client = (server RSS with N clients − RSS before) / N;
* latency = ``ping`` → ``pong`` (the echo for the baseline), measured two ways: one at a
  time on a random sample of the connected clients (``idle``), and every client at once
  (``burst``).

Goals (master): ≤ 40 KiB per client, p99 ≤ 50 ms.

Command (from the repository root, about 1–2 minutes)::

    .venv/bin/python -m bench.master_clients --clients 5000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

SYSTEMS = ("baseline", "baseline-shared", "master")
GOAL_KIB = 40.0
GOAL_P99_MS = 50.0
PING = '{"v":1,"type":"ping","seq":%d}'


def raise_nofile() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# --- servers (run in their own process) ----------------------------------------------------


async def serve(system: str, root: Path, port: int, keys: int) -> None:
    from aiohttp import web

    from atlas.net.tls import server_context
    from atlas.node.datadir import DataDir
    from atlas.protocol.control import MAX_MESSAGE_BYTES

    dd = DataDir(root)
    ctx = server_context(dd.cert_file, dd.key_file)
    if system == "baseline-shared":
        from atlas.net.tls_memory import share_tls_read_buffers

        share_tls_read_buffers()
    if system == "master":
        from atlas.broker.service import BROKER, replace_settings
        from atlas.node.app import build_app
        from atlas.node.runtime import Node

        app = build_app(Node(root))
        broker = app[BROKER]
        replace_settings(broker, idle_timeout_seconds=3600.0)
        issued = [broker.issue_session_key("general", 3600).short_key for _ in range(keys)]
        (root / "keys.json").write_text(json.dumps(issued))
    else:
        async def echo(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse(max_msg_size=2 * MAX_MESSAGE_BYTES, compress=False,
                                       heartbeat=20.0)
            await ws.prepare(request)
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    await ws.send_str(msg.data)
            return ws

        app = web.Application()
        app.router.add_get("/client/control", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx, backlog=4096)
    await site.start()
    print("READY", flush=True)
    await asyncio.Event().wait()


# --- clients ---------------------------------------------------------------------------------


@dataclass
class Conn:
    """One client; its reader task answers the server's WebSocket pings (as a real
    client that keeps reading does) and queues what arrives."""

    ws: aiohttp.ClientWebSocketResponse
    seq: int = 0
    inbox: asyncio.Queue[str] | None = None
    reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.inbox = asyncio.Queue()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.inbox is not None
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                self.inbox.put_nowait(msg.data)

    async def receive(self) -> str:
        assert self.inbox is not None
        return await asyncio.wait_for(self.inbox.get(), 30)

    async def close(self) -> None:
        await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader


async def connect_all(system: str, port: int, n: int, sources: int, ctx: ssl.SSLContext,
                      keys: list[str]) -> tuple[list[Conn], list[aiohttp.ClientSession]]:
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=ctx, limit=0, local_addr=(f"127.0.{10 + i // 250}.{1 + i % 250}", 0)))
        for i in range(sources)
    ]
    url = f"https://127.0.0.1:{port}/client/control"
    gate = asyncio.Semaphore(100)
    conns: list[Conn | None] = [None] * n

    async def one(i: int) -> None:
        async with gate:
            ws = await sessions[i % sources].ws_connect(
                url, server_hostname="localhost", compress=0, autoping=True,
                max_msg_size=256 * 1024, timeout=aiohttp.ClientWSTimeout(ws_close=5))
            if system == "master":
                await ws.send_str(json.dumps({
                    "v": 1, "type": "hello", "kind": "support_customer",
                    "software_version": "1.0", "platform": "bench",
                    "hostname": f"client-{i}", "utc_offset_minutes": 0}))
                await ws.send_str(json.dumps({"v": 1, "type": "auth_customer",
                                              "session_key": keys[i]}))
                welcome = json.loads(await ws.receive_str(timeout=30))
                assert welcome["type"] == "welcome", welcome
                queued = json.loads(await ws.receive_str(timeout=30))
                assert queued["type"] == "session_queued", queued
            else:
                await ws.send_str("hello")
                await ws.receive_str(timeout=30)
            conn = conns[i] = Conn(ws)
            conn.start()

    await asyncio.gather(*(one(i) for i in range(n)))
    return [c for c in conns if c is not None], sessions


async def ping(conn: Conn) -> float:
    conn.seq += 1
    t0 = time.perf_counter()
    await conn.ws.send_str(PING % conn.seq)
    reply = await conn.receive()
    elapsed = time.perf_counter() - t0
    assert f'"seq":{conn.seq}' in reply, reply
    return elapsed * 1000


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass
class Result:
    system: str
    clients: int
    connect_s: float
    kib_per_client: float
    rss_before_mib: float
    rss_after_mib: float
    idle_p50: float
    idle_p99: float
    burst_p50: float
    burst_p99: float


async def measure(system: str, args: argparse.Namespace, root: Path,
                  ctx: ssl.SSLContext) -> Result:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.master_clients", "--serve", system, "--root",
         str(root), "--port", str(port), "--keys", str(args.clients + 10)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        if line.strip() != "READY":
            raise RuntimeError(f"{system} server did not start: {line!r}")
        keys: list[str] = json.loads((root / "keys.json").read_text()) \
            if system == "master" else []
        # warm up: one connection through every code path before the first RSS reading
        warm, warm_sessions = await connect_all(system, port, 10, 1, ctx, keys[-10:])
        for c in warm:
            await ping(c)
            await c.close()
        for s in warm_sessions:
            await s.close()
        await asyncio.sleep(1.0)
        before = rss_kib(proc.pid)
        t0 = time.perf_counter()
        conns, sessions = await connect_all(system, port, args.clients, args.sources, ctx,
                                            keys)
        connect_s = time.perf_counter() - t0
        await asyncio.sleep(2.0)  # let the server settle (freed handshake buffers)
        after = rss_kib(proc.pid)
        rng = random.Random(1)
        sample = rng.sample(conns, min(args.samples, len(conns)))
        idle = [await ping(c) for c in sample]
        burst: list[float] = []
        for _ in range(args.bursts):
            burst += await asyncio.gather(*(ping(c) for c in conns))
            await asyncio.sleep(0.5)
        await asyncio.gather(*(c.close() for c in conns))
        for s in sessions:
            await s.close()
        return Result(
            system, len(conns), connect_s, (after - before) / len(conns),
            before / 1024, after / 1024,
            statistics.median(idle), percentile(idle, 99),
            statistics.median(burst), percentile(burst, 99),
        )
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def table(results: list[Result]) -> str:
    rows = [
        "| system | clients | connect s | KiB/client | RSS before → after MiB | "
        "idle p50 ms | idle p99 ms | burst p50 ms | burst p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        rows.append(
            f"| {r.system} | {r.clients} | {r.connect_s:.1f} | {r.kib_per_client:.1f} | "
            f"{r.rss_before_mib:.0f} → {r.rss_after_mib:.0f} | {r.idle_p50:.2f} | "
            f"{r.idle_p99:.2f} | {r.burst_p50:.1f} | {r.burst_p99:.1f} |"
        )
    return "\n".join(rows)


async def main(args: argparse.Namespace) -> int:
    hard = raise_nofile()
    if hard < args.clients + 1000:
        print(f"RLIMIT_NOFILE hard limit {hard} is too low for {args.clients} clients")
        return 2
    from atlas.net.tls import client_context
    from atlas.node.datadir import DataDir
    from atlas.node.init import init_node

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "master"
        init_node(root, name="bench-master", public="localhost:443", listen="127.0.0.1",
                  admin_password="bench admin password")
        ctx = client_context(DataDir(root).ca_file)
        results = []
        for system in args.systems:
            print(f"{system}: connecting {args.clients} clients …", file=sys.stderr)
            results.append(await measure(system, args, root, ctx))
    print(table(results))
    by_name = {r.system: r for r in results}
    master = by_name.get("master")
    base = by_name.get("baseline-shared")
    if master is None:
        return 0
    if base is not None:
        print()
        print(f"master − baseline-shared: {master.kib_per_client - base.kib_per_client:.1f}"
              " KiB/client")
    ok_mem = master.kib_per_client <= GOAL_KIB
    ok_lat = master.idle_p99 <= GOAL_P99_MS
    print(f"goal ≤ {GOAL_KIB:g} KiB/client: {'PASS' if ok_mem else 'FAIL'}; "
          f"goal idle p99 ≤ {GOAL_P99_MS:g} ms: {'PASS' if ok_lat else 'FAIL'}")
    return 0 if ok_mem and ok_lat else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=5000)
    p.add_argument("--sources", type=int, default=50,
                   help="source addresses 127.0.10.1… the clients are spread over")
    p.add_argument("--samples", type=int, default=2000,
                   help="clients pinged one at a time for the idle latency")
    p.add_argument("--bursts", type=int, default=3, help="rounds of every client at once")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument("--serve", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--keys", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    if arguments.serve:
        raise_nofile()
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(arguments.serve, arguments.root, arguments.port,
                              arguments.keys))
        sys.exit(0)
    sys.exit(asyncio.run(main(arguments)))




