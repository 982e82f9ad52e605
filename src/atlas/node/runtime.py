"""The running node: identity, database, resolver, metrics and background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge

from atlas import SOFTWARE_VERSION
from atlas.net.resolver import Resolver
from atlas.node.datadir import DataDir, Identity
from atlas.store.db import Database

log = logging.getLogger("atlas.node")

BackgroundFactory = Callable[[], Awaitable[None]]


class Node:
    """Everything one ``atlas serve`` process holds; web handlers reach it via ``app[NODE]``."""

    def __init__(self, root: Path, *, resolver: Resolver | None = None) -> None:
        self.datadir = DataDir(root)
        self.identity: Identity = self.datadir.load_identity()
        self.db = Database(self.datadir.db_file)
        self.resolver = resolver or Resolver.from_env(self.db.get_setting("dns_server"))
        # Tests run a node "on another version" with ATLAS_SOFTWARE_VERSION_OVERRIDE.
        self.software_version = os.environ.get("ATLAS_SOFTWARE_VERSION_OVERRIDE", SOFTWARE_VERSION)
        self.started_at = time.time()
        self.metrics = CollectorRegistry()
        self._info = Gauge(
            "atlas_node_info", "Node identity", ["guid", "name", "version"], registry=self.metrics
        )
        self._info.labels(self.identity.guid, self.identity.name, self.software_version).set(1)
        self._background: list[tuple[str, BackgroundFactory]] = []
        self._tasks: list[asyncio.Task[None]] = []

    # --- secrets -------------------------------------------------------------------
    @property
    def psk(self) -> str | None:
        """The Inter-appliance Communication Pre-shared Key, or None if not set."""
        raw = self.datadir.read_secret("psk")
        return raw.decode() if raw else None

    def set_psk(self, psk: str) -> None:
        self.datadir.write_secret("psk", psk.encode())

    @property
    def trust_file(self) -> Path | None:
        """CA bundle for node-to-node TLS, if the node was given one."""
        return self.datadir.ca_file if self.datadir.ca_file.exists() else None

    # --- background tasks ----------------------------------------------------------
    def add_background(self, name: str, factory: BackgroundFactory) -> None:
        """Register a long-running task; started with the server, cancelled on shutdown."""
        self._background.append((name, factory))

    async def start_background(self) -> None:
        for name, factory in self._background:
            task = asyncio.create_task(self._guard(name, factory), name=name)
            self._tasks.append(task)

    async def _guard(self, name: str, factory: BackgroundFactory) -> None:
        try:
            await factory()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task %s failed", name)

    async def stop_background(self, timeout: float = 5.0) -> None:
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait(self._tasks, timeout=timeout)
        self._tasks.clear()

    def close(self) -> None:
        self.db.close()
