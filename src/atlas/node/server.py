"""``atlas serve``: HTTPS on the public address (and the internal one where it differs).

An optional **anycast listener** (design section 9: "Anycast is stood in for by traffic
nodes sharing one loopback address"): with ``ATLAS_ANYCAST_LISTEN=ip:port`` in its
environment the node also serves the same application on that shared address, bound
with ``SO_REUSEPORT`` so that several nodes can bind it at once and the kernel spreads
new connections over them. Its certificate must cover the TLS name the ``anycast``
method hands out with the address (``selection.anycast_tls_name``). Unset or empty: no
anycast listener.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import signal
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path

from aiohttp import web

from atlas.net.tls import server_context
from atlas.node.app import build_app
from atlas.node.datadir import DataDir, DataDirError, HostPort
from atlas.node.runtime import Node

log = logging.getLogger("atlas.serve")

LISTEN_BACKLOG = 4096
SHUTDOWN_TIMEOUT = 10.0
ANYCAST_ENV = "ATLAS_ANYCAST_LISTEN"


class ServeError(RuntimeError):
    """Why the node could not start; the message is for the operator."""


def _bindings(node: Node) -> list[tuple[str, int]]:
    ident = node.identity
    out = [(ident.listen, ident.public.port)]
    if ident.internal.port != ident.public.port:
        out.append((ident.listen, ident.internal.port))
    return out


def anycast_binding(environ: Mapping[str, str] | None = None) -> tuple[str, int] | None:
    """The shared ``(ip, port)`` from ``ATLAS_ANYCAST_LISTEN``, or None when unset."""
    text = (os.environ if environ is None else environ).get(ANYCAST_ENV, "").strip()
    if not text:
        return None
    try:
        address = HostPort.parse(text)
        ipaddress.ip_address(address.host)
    except ValueError as exc:
        raise ServeError(
            f"{ANYCAST_ENV}={text!r}: expected the shared IP address and port to bind, "
            f"as ip:port such as 127.0.2.100:8443 ({exc})"
        ) from None
    return address.host, address.port


async def _start_site(site: web.TCPSite, host: str, port: int) -> None:
    try:
        await site.start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(f"{host}:{port} is already in use by another process") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ServeError(f"{host} is not an address of this machine") from None
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


async def serve(
    root: Path,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Node], None] | None = None,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
) -> None:
    """Run the node until ``stop`` is set or SIGINT/SIGTERM arrives; then shut down."""
    dd = DataDir(root)
    anycast = anycast_binding()
    try:
        node = Node(root)
    except DataDirError as exc:
        raise ServeError(str(exc)) from None
    try:
        ctx = server_context(dd.cert_file, dd.key_file)
    except (OSError, ssl.SSLError) as exc:
        node.close()
        raise ServeError(f"cannot load the TLS certificate in {dd.tls_dir}: {exc}") from None

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    app = build_app(node)
    wrote_pid = False
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        for host, port in _bindings(node):
            site = web.TCPSite(
                runner, host, port, ssl_context=ctx, backlog=LISTEN_BACKLOG, reuse_address=True
            )
            await _start_site(site, host, port)
            log.info("listening", extra={"address": f"https://{host}:{port}"})
        if anycast is not None:
            host, port = anycast
            site = web.TCPSite(
                runner, host, port, ssl_context=ctx, backlog=LISTEN_BACKLOG,
                reuse_address=True, reuse_port=True,
            )
            await _start_site(site, host, port)
            log.info("listening (anycast, shared)", extra={"address": f"https://{host}:{port}"})
        dd.pid_file.write_text(f"{os.getpid()}\n")
        wrote_pid = True
        log.info(
            "node ready",
            extra={"node": node.identity.name, "guid": node.identity.guid,
                   "public": str(node.identity.public)},
        )
        if on_ready:
            on_ready(node)
        await stop.wait()
        log.info("shutting down")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await asyncio.wait_for(runner.cleanup(), shutdown_timeout + 5)
        if wrote_pid:  # a second serve that failed to bind must not remove the first's
            dd.pid_file.unlink(missing_ok=True)
        node.close()
        log.info("stopped")
