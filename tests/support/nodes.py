"""Real node processes for tests: ``python -m atlas serve DIR`` on loopback, verified TLS."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from atlas.node.datadir import DataDir


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class NodeProcess:
    """One ``atlas serve`` subprocess; ``stop()`` always leaves nothing running."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_file: Path | None = None

    @property
    def identity(self):  # type: ignore[no-untyped-def]
        return DataDir(self.data_dir).load_identity()

    @property
    def url(self) -> str:
        ident = self.identity
        return f"https://{ident.public.host}:{ident.public.port}"

    @property
    def ca_file(self) -> Path:
        return DataDir(self.data_dir).ca_file

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def start(self, wait: bool = True, timeout: float = 20.0) -> NodeProcess:
        self.log_file = self.data_dir.parent / f"{self.data_dir.name}.log"
        log = open(self.log_file, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "atlas", "serve", str(self.data_dir)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
        )
        log.close()
        if wait:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 20.0) -> dict[str, object]:
        import json

        deadline = time.monotonic() + timeout
        ident = self.identity
        ctx = self.ssl_context()
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                req = urllib.request.Request(f"{self.url}/healthz")
                # Connect to the listen IP; TLS still verifies the public hostname.
                with _open(req, ctx, ident.listen, ident.public.port) as resp:
                    return dict(json.loads(resp.read()))
            except (OSError, urllib.error.URLError) as exc:
                last = exc
                time.sleep(0.05)
        raise TimeoutError(f"node not healthy within {timeout}s: {last}\n{self.logs()}")

    def logs(self) -> str:
        if self.log_file and self.log_file.exists():
            return self.log_file.read_text(errors="replace")[-4000:]
        return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return int(code)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def _open(req: urllib.request.Request, ctx: ssl.SSLContext, ip: str, port: int):  # type: ignore[no-untyped-def]
    """urlopen that connects to ``ip`` whatever the hostname resolves to."""
    import http.client

    class _Conn(http.client.HTTPSConnection):
        def connect(self) -> None:
            sock = socket.create_connection((ip, port), timeout=5)
            self.sock = ctx.wrap_socket(sock, server_hostname=self.host)

    class _Handler(urllib.request.HTTPSHandler):
        def https_open(self, r):  # type: ignore[no-untyped-def]
            return self.do_open(_Conn, r, context=ctx)

    return urllib.request.build_opener(_Handler).open(req, timeout=5)
