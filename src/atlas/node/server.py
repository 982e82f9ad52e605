"""``atlas serve``: HTTPS on the public address (and the internal one where it differs)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import ssl
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from atlas.net.tls import server_context
from atlas.node.app import build_app
from atlas.node.datadir import DataDir, DataDirError
from atlas.node.runtime import Node

log = logging.getLogger("atlas.serve")

LISTEN_BACKLOG = 4096
SHUTDOWN_TIMEOUT = 10.0


class ServeError(RuntimeError):
    """Why the node could not start; the message is for the operator."""


def _bindings(node: Node) -> list[tuple[str, int]]:
    ident = node.identity
    out = [(ident.listen, ident.public.port)]
    if ident.internal.port != ident.public.port:
        out.append((ident.listen, ident.internal.port))
    return out


async def serve(
    root: Path,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Node], None] | None = None,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
) -> None:
    """Run the node until ``stop`` is set or SIGINT/SIGTERM arrives; then shut down."""
    dd = DataDir(root)
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
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        for host, port in _bindings(node):
            site = web.TCPSite(
                runner, host, port, ssl_context=ctx, backlog=LISTEN_BACKLOG, reuse_address=True
            )
            try:
                await site.start()
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ServeError(
                        f"{host}:{port} is already in use by another process"
                    ) from None
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise ServeError(f"{host} is not an address of this machine") from None
                raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
            log.info("listening", extra={"address": f"https://{host}:{port}"})
        dd.pid_file.write_text(f"{os.getpid()}\n")
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
        dd.pid_file.unlink(missing_ok=True)
        node.close()
        log.info("stopped")
