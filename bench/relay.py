"""Stream relay throughput: Atlas's relay against nginx ``stream``, over TLS on loopback.

    .venv/bin/python -m bench.relay --nice 15       # 3 rounds × 3 shapes × 3 systems, ~2.5 min
    .venv/bin/python -m bench.relay --rounds 1      # quick look

N parallel publisher → viewer pairs each push frames of one size through one relay
process as fast as it takes them, each publisher at most a small window (4 frames to
4 MiB) ahead of its own viewer; we count the bytes the viewers receive (MB = 10⁶ bytes).
The window keeps the comparison about capacity: without it a load generator that
outruns the relay makes Atlas skip frames for its viewers (by design, see
``atlas.relay.hub``) where nginx would push back on the publisher.
Both paths do the same work, client → TLS → relay → TLS → client:

* **atlas**: the traffic node's stream endpoint (``atlas.relay.endpoint.install``) in its
  own process. Viewer and publisher connect with ``Upgrade: atlas-stream/1`` and a stream
  token; the relay decrypts, parses frames, fans them out (one viewer each here) and
  re-encrypts. ``atlas-ws`` is the same relay with WebSocket connections instead.
* **nginx**: ``stream { server { listen … ssl; proxy_pass …; proxy_ssl on; } }``, the
  same frame bytes (opaque to it): the publisher connects to nginx over TLS, nginx
  connects over TLS to the load generator, which plays the viewer as a TLS server.

Server and load generator are pinned to one core each (``os.sched_setaffinity``). The
load generator is one Python thread driving non-blocking ``ssl`` sockets with
``selectors`` (no asyncio), reading before writing. Its CPU use and the server's are
printed too: a column near 100 % shows who the bottleneck was. Figures go into
docs/performance.md, "Stream relay".
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from atlas.broker.stream_tokens import StreamSigner
from atlas.net import certs
from atlas.protocol.frames import Frame, FrameType

HOST = "127.0.0.1"
NODE_GUID = "b" * 32
SHAPES: list[tuple[int, int]] = [(1, 256 * 1024), (50, 64 * 1024), (200, 16 * 1024)]
GOALS = [0.9, 0.9, 0.75]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
KEY_EVERY = 30
SEND_CHUNK = 256 * 1024
RECV_BUF = 256 * 1024
SERVER_CPU, LOADGEN_CPU = 1, 0


# --- the Atlas relay process ---------------------------------------------------------

def serve_atlas(args: argparse.Namespace) -> None:
    import asyncio

    from aiohttp import web

    from atlas.broker.stream_tokens import StreamKeyring
    from atlas.net.tls import server_context
    from atlas.net.tls_memory import share_tls_read_buffers
    from atlas.relay.endpoint import install

    # As on a real node (atlas.web.control_ws applies it process-wide): TLS connections
    # share one read buffer per thread.
    if os.environ.get("BENCH_STOCK_TLS") != "1":
        share_tls_read_buffers()

    # Closing hundreds of connections at once at the end of each run makes asyncio warn
    # about writes racing the close; that is the benchmark's doing, not news.
    logging.getLogger("asyncio").setLevel(logging.ERROR)

    async def run() -> None:
        app = web.Application()
        keyring = StreamKeyring.from_pems([Path(args.pubkey).read_bytes()])
        service = install(app, node_guid=NODE_GUID, keyring=keyring)

        async def stats(_r: web.Request) -> web.Response:
            return web.json_response(service.stats())

        app.router.add_get("/bench/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        ctx = server_context(Path(args.cert), Path(args.key))
        site = web.TCPSite(runner, HOST, args.port, ssl_context=ctx, backlog=4096)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        print("READY", flush=True)
        await stop.wait()
        await runner.cleanup()

    if args.profile:
        import cProfile

        prof = cProfile.Profile(time.process_time)  # CPU time: other load does not count
        prof.runctx("asyncio.run(run())", globals(), locals())
        prof.dump_stats(args.profile)
    else:
        asyncio.run(run())


# --- the load generator --------------------------------------------------------------

def frame_block(size: int) -> bytes:
    """KEY_EVERY frames with ``size``-byte payloads: one key frame, then deltas."""
    payload = os.urandom(size)
    return b"".join(
        bytes(Frame(FrameType.KEY if i == 0 else FrameType.DELTA, i + 1, i, payload))
        for i in range(KEY_EVERY)
    )


def ws_masked_block(block_frames: list[bytes]) -> bytes:
    """The same frames as masked client→server WebSocket binary messages (RFC 6455 §5.3)."""
    mask = os.urandom(4)
    out = []
    for f in block_frames:
        n = len(f)
        if n < 126:
            head = bytes([0x82, 0x80 | n])
        elif n < 65536:
            head = bytes([0x82, 0x80 | 126]) + n.to_bytes(2, "big")
        else:
            head = bytes([0x82, 0x80 | 127]) + n.to_bytes(8, "big")
        key = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(f, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
        out.append(head + mask + masked)
    return b"".join(out)


def split_frames(block: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(block):
        length = int.from_bytes(block[pos + 4:pos + 8], "big")
        out.append(block[pos:pos + 24 + length])
        pos += 24 + length
    return out


@dataclass
class Conn:
    sock: ssl.SSLSocket
    send_data: memoryview | None = None  # publishers: the block, sent round and round
    pos: int = 0
    received: int = 0  # viewers: bytes received
    sent: float = 0.0  # publishers: bytes sent, counted as the viewer will receive them
    scale: float = 1.0  # publishers: viewer bytes per byte sent (WebSocket headers differ)
    peer: Conn | None = None  # publisher <-> its viewer
    parked: bool = False  # publisher waiting for its viewer to catch up


@dataclass
class Result:
    mbps: float
    server_cpu: float
    loadgen_cpu: float
    dropped: int = 0
    cipher: str = ""


def http_upgrade(sock: ssl.SSLSocket, path: str, token: str, kind: str) -> bytes:
    """Blocking HTTP/1.1 upgrade; returns bytes that arrived after the response head."""
    if kind == "websocket":
        upgrade = ("Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                   f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n")
    else:
        upgrade = "Upgrade: atlas-stream/1\r\n"
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\n{upgrade}"
                  f"Authorization: Bearer {token}\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError(f"connection closed during upgrade: {buf!r}")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"upgrade refused: {head[:200]!r}")
    return rest


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pump(conns: list[Conn], window: int, warmup: float, seconds: float,
         server_pid: int) -> Result:
    """Publishers send as fast as the relay takes their bytes, but never more than
    ``window`` bytes ahead of their own viewer: a relay is measured at the rate it
    delivers, not driven into skipping frames (which Atlas would do, by design, for a
    viewer that falls that far behind)."""
    sel = selectors.DefaultSelector()
    subs = [c for c in conns if c.send_data is None]
    for c in conns:
        c.sock.setblocking(False)
        sel.register(c.sock, selectors.EVENT_WRITE if c.send_data is not None
                     else selectors.EVENT_READ, c)
    buf = bytearray(RECV_BUF)
    start = time.monotonic()
    t_measure = start + warmup
    t_end = t_measure + seconds
    measuring = False
    base_bytes = 0
    t0 = start
    cpu0 = (0.0, 0.0)
    while True:
        now = time.monotonic()
        if not measuring and now >= t_measure:
            measuring = True
            base_bytes = sum(c.received for c in subs)
            t0 = now
            cpu0 = (proc_cpu_seconds(server_pid), time.process_time())
        if now >= t_end:
            break
        events = sel.select(0.05)
        events.sort(key=lambda e: e[1] != selectors.EVENT_READ)  # read first
        for key, mask in events:
            c: Conn = key.data
            s = c.sock
            if c.send_data is None:
                try:
                    while True:
                        n = s.recv_into(buf)
                        if n == 0:
                            raise RuntimeError("the relay closed a viewer connection")
                        c.received += n
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                p = c.peer
                if p is not None and p.parked and p.sent - c.received < window / 2:
                    p.parked = False
                    sel.modify(p.sock, selectors.EVENT_WRITE, p)
            elif mask & selectors.EVENT_WRITE:
                data = c.send_data
                viewer = c.peer
                assert viewer is not None
                try:
                    while c.sent - viewer.received < window:
                        end = c.pos + SEND_CHUNK
                        n = s.send(data[c.pos:end])
                        c.pos = (c.pos + n) % len(data)
                        c.sent += n * c.scale
                    c.parked = True  # publisher sockets never get data: this parks it
                    sel.modify(s, selectors.EVENT_READ, c)
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    pass
    elapsed = time.monotonic() - t0
    got = sum(c.received for c in subs) - base_bytes
    server_cpu = (proc_cpu_seconds(server_pid) - cpu0[0]) / elapsed
    loadgen_cpu = (time.process_time() - cpu0[1]) / elapsed
    sel.close()
    return Result(got / elapsed / 1e6, server_cpu, loadgen_cpu)


def window_for(pairs: int, frame_size: int) -> int:
    """Bytes a publisher may be ahead of its viewer: 8 MiB shared by all pairs, at most
    4 MiB and at least 4 frames (well within the relay's 8 MiB outbox per viewer)."""
    return max(min(4 * 1024 * 1024, 8 * 1024 * 1024 // pairs), 4 * (frame_size + 24))


def close_all(conns: list[Conn]) -> None:
    for c in conns:
        try:
            c.sock.close()
        except OSError:
            pass


def run_atlas(port: int, pid: int, shape: tuple[int, int], client_ctx: ssl.SSLContext,
              signer: StreamSigner, kind: str, warmup: float, seconds: float) -> Result:
    pairs, size = shape
    block = frame_block(size)
    data = ws_masked_block(split_frames(block)) if kind == "websocket" else block
    delivered = len(block)
    if kind == "websocket":  # the relay's (unmasked) message headers
        delivered += sum(2 + (0 if len(f) < 126 else 2 if len(f) < 65536 else 8)
                         for f in split_frames(block))
    conns: list[Conn] = []
    now = time.time()
    try:
        for i in range(pairs):
            for direction in ("subscribe", "publish"):
                token = signer.issue(node_guid=NODE_GUID, participant=f"p{i}", session="bench",
                                     direction=direction, stream=f"screen:{i}", now=now,
                                     ttl=600)
                raw = socket.create_connection((HOST, port))
                s = client_ctx.wrap_socket(raw, server_hostname=HOST)
                rest = http_upgrade(s, f"/relay/v1/sessions/bench/streams/screen:{i}/"
                                    f"{direction}", token, kind)
                if direction == "publish":
                    c = Conn(s, memoryview(data), scale=delivered / len(data), peer=conns[-1])
                    conns[-1].peer = c
                else:
                    c = Conn(s, received=len(rest))
                conns.append(c)
        cipher = conns[0].sock.cipher()
        base = relay_stats(port)
        r = pump(conns, window_for(pairs, size), warmup, seconds, pid)
        r.dropped = relay_stats(port)["frames_dropped"] - base["frames_dropped"]
        r.cipher = f"{cipher[1]} {cipher[0]}" if cipher else ""
    finally:
        close_all(conns)
    deadline = time.monotonic() + 30
    while True:  # let the relay notice the closed connections before the next run
        st = relay_stats(port)
        if st["streams"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return r


def relay_stats(port: int) -> dict[str, int]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(f"https://{HOST}:{port}/bench/stats",
                                context=ctx, timeout=10) as resp:
        return dict(json.load(resp))


def run_nginx(port: int, backend: socket.socket, pid: int, shape: tuple[int, int],
              client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, warmup: float,
              seconds: float) -> Result:
    pairs, size = shape
    data = memoryview(frame_block(size))
    conns: list[Conn] = []
    try:
        for _ in range(pairs):
            raw = socket.create_connection((HOST, port))
            pub = client_ctx.wrap_socket(raw, server_hostname=HOST)
            pub.send(b"")  # handshake done; nginx now connects upstream
            backend.settimeout(10)
            up, _addr = backend.accept()
            up.settimeout(10)
            viewer = server_ctx.wrap_socket(up, server_side=True)
            v = Conn(viewer)
            conns.append(v)
            conns.append(Conn(pub, data, peer=v))
            v.peer = conns[-1]
        cipher = conns[0].sock.cipher()
        r = pump(conns, window_for(pairs, size), warmup, seconds, pid)
        r.cipher = f"{cipher[1]} {cipher[0]}" if cipher else ""
    finally:
        close_all(conns)
    return r


NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
load_module {module};
events {{ worker_connections 4096; }}
stream {{
    server {{
        listen {host}:{port} ssl backlog=4096;
        ssl_certificate {tmp}/cert.pem;
        ssl_certificate_key {tmp}/key.pem;
        ssl_protocols TLSv1.3;
        proxy_pass {host}:{backend};
        proxy_ssl on;
        proxy_ssl_protocols TLSv1.3;
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pin(pid: int, cpu: int) -> None:
    try:
        os.sched_setaffinity(pid, {cpu})
    except OSError as exc:
        print(f"(could not pin pid {pid} to CPU {cpu}: {exc})", file=sys.stderr)


@dataclass
class Servers:
    tmp: Path
    atlas: subprocess.Popen[str] | None = None
    atlas_port: int = 0
    nginx: subprocess.Popen[str] | None = None
    nginx_port: int = 0
    backend: socket.socket | None = None
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.backend is not None:
            self.backend.close()


def start_servers(tmp: Path, systems: list[str], signer: StreamSigner,
                  profile: str | None) -> Servers:
    srv = Servers(tmp)
    server_cpu = SERVER_CPU if (os.cpu_count() or 1) > 1 else 0
    if any(s.startswith("atlas") for s in systems):
        (tmp / "stream-key.pem").write_bytes(signer.public_key_pem())
        srv.atlas_port = free_port()
        p = subprocess.Popen(
            [sys.executable, __file__, "--serve-atlas", "--port", str(srv.atlas_port),
             "--cert", str(tmp / "cert.pem"), "--key", str(tmp / "key.pem"),
             "--pubkey", str(tmp / "stream-key.pem")]
            + (["--profile", str(Path(profile).resolve())] if profile else []),
            stdout=subprocess.PIPE, text=True,
        )
        srv.procs.append(p)
        srv.atlas = p
        assert p.stdout is not None
        if p.stdout.readline().strip() != "READY":
            raise RuntimeError("the Atlas relay did not start")
        pin(p.pid, server_cpu)
    if "nginx" in systems:
        srv.backend = socket.socket()
        srv.backend.bind((HOST, 0))
        srv.backend.listen(4096)
        srv.nginx_port = free_port()
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(
            tmp=tmp, module=NGINX_STREAM_MODULE, host=HOST, port=srv.nginx_port,
            backend=srv.backend.getsockname()[1]))
        p = subprocess.Popen([NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        srv.procs.append(p)
        srv.nginx = p
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, srv.nginx_port), timeout=1).close()
                break
            except OSError:
                if p.poll() is not None or time.monotonic() > deadline:
                    err = p.stderr.read() if p.stderr else ""
                    raise RuntimeError(f"nginx did not start: {err}") from None
                time.sleep(0.05)
        pin(p.pid, server_cpu)
    return srv


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="measured time per run")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--systems", default="atlas,atlas-ws,nginx")
    ap.add_argument("--shapes", default="0,1,2", help="indexes into 1×256K,50×64K,200×16K")
    ap.add_argument("--profile", metavar="FILE",
                    help="run the Atlas relay under cProfile and write its stats to FILE")
    ap.add_argument("--nice", type=int, default=0, metavar="N",
                    help="raise the benchmark's priority by N (needs root; shared machines)")
    ap.add_argument("--serve-atlas", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cert", help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    ap.add_argument("--pubkey", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_atlas:
        serve_atlas(args)
        return 0

    if args.nice:
        # a shared machine: let the benchmark (and the servers it starts) win the CPU
        os.setpriority(os.PRIO_PROCESS, 0, -args.nice)
        try:  # with autogroup scheduling, niceness only counts within the session
            Path("/proc/self/autogroup").write_text(str(-args.nice))
        except OSError:
            pass
    systems = args.systems.split(",")
    shapes = [SHAPES[int(i)] for i in args.shapes.split(",")]
    if (os.cpu_count() or 1) > 1:
        pin(0, LOADGEN_CPU)
    signer = StreamSigner.generate(issuer="a" * 32)
    ca = certs.create_ca()
    pair = certs.issue(ca, [HOST])
    client_ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    client_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    results: dict[tuple[int, str], list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="atlas-bench-relay-") as t:
        tmp = Path(t)
        (tmp / "cert.pem").write_bytes(pair.cert_pem)
        (tmp / "key.pem").write_bytes(pair.key_pem)
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
        srv = start_servers(tmp, systems, signer, args.profile)
        try:
            for rnd in range(args.rounds):
                for si, shape in enumerate(shapes):
                    for system in systems:
                        if system == "nginx":
                            assert srv.nginx is not None and srv.backend is not None
                            r = run_nginx(srv.nginx_port, srv.backend, srv.nginx.pid, shape,
                                          client_ctx, server_ctx, args.warmup, args.seconds)
                        else:
                            assert srv.atlas is not None
                            kind = "websocket" if system == "atlas-ws" else "atlas-stream"
                            r = run_atlas(srv.atlas_port, srv.atlas.pid, shape, client_ctx,
                                          signer, kind, args.warmup, args.seconds)
                        results.setdefault((si, system), []).append(r)
                        print(f"round {rnd + 1} {shape[0]}×{shape[1] // 1024}K {system:9} "
                              f"{r.mbps:7.1f} MB/s  server CPU {r.server_cpu:4.0%}  "
                              f"loadgen CPU {r.loadgen_cpu:4.0%}  {r.cipher}"
                              + (f"  dropped {r.dropped}" if system != "nginx" else ""),
                              file=sys.stderr, flush=True)
        finally:
            srv.stop()

    def med(si: int, system: str) -> float | None:
        rs = results.get((si, system))
        return statistics.median(r.mbps for r in rs) if rs else None

    def cpu(si: int, system: str) -> str:
        rs = results.get((si, system))
        if not rs:
            return "—"
        return (f"{statistics.median(r.server_cpu for r in rs):.0%}/"
                f"{statistics.median(r.loadgen_cpu for r in rs):.0%}")

    print()
    print(f"Median of {args.rounds} runs of {args.seconds:g} s (after {args.warmup:g} s warm-up);"
          " MB = 10^6 bytes; CPU = server/load generator")
    print()
    print("| shape | atlas MB/s | atlas-ws MB/s | nginx MB/s | ratio | goal | result |"
          " CPU atlas | CPU nginx |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    failed = False
    for si, shape in enumerate(shapes):
        goal = GOALS[SHAPES.index(shape)]
        a, w, n = med(si, "atlas"), med(si, "atlas-ws"), med(si, "nginx")
        ratio = a / n if a is not None and n else None
        verdict = "—" if ratio is None else ("PASS" if ratio >= goal else "FAIL")
        failed |= verdict == "FAIL"

        def f(x: float | None) -> str:
            return "—" if x is None else f"{x:.0f}"

        print(f"| {shape[0]} × {shape[1] // 1024} KiB | {f(a)} | {f(w)} | {f(n)} | "
              f"{'—' if ratio is None else f'{ratio:.2f}×'} | ≥ {goal}× | {verdict} | "
              f"{cpu(si, 'atlas')} | {cpu(si, 'nginx')} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
