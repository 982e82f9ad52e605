"""``DIR/demo.json``: what a running (or stopped) demo is, for scripts and tests.

Written by ``atlas demo`` (mode 0600: it holds the demo's credentials) when the demo
directory is created, and rewritten as the demo starts, runs and stops. Read it with
:func:`load_info` (or as plain JSON); ``version`` changes when a field changes meaning.

``state`` is ``stopped`` → ``starting`` → ``running`` → ``stopping`` → ``stopped``;
``pid`` fields are set while the process runs.

Two processes write it: ``atlas demo`` (state, processes) and ``atlas demo set-method``
(the method fields) while the demo runs. Both go through :func:`update_info`, which holds
``demo.json.lock`` from reading to writing, so neither undoes the other's change.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from atlas.net.certs import write_private

DEMO_FILE = "demo.json"
SCHEMA_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Credentials(_Model):
    username: str
    password: str


class RepresentativeInfo(Credentials):
    display_name: str


class ApiAccountInfo(_Model):
    name: str
    client_id: str
    client_secret: str
    permissions: list[str]


class DnsInfo(_Model):
    host: str
    port: int = Field(description="0 until the server has started once")
    zone_file: str
    log_file: str
    pid: int | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class RegionInfo(_Model):
    key: str
    label: str
    timezone: str
    client_networks: list[str]
    anycast_address: str
    traffic_nodes: list[str]


class NodeInfo(_Model):
    name: str
    role: str = Field(description="primary, backup (idle: a standalone node) or traffic")
    region: str | None
    public: str = Field(description="public address host:port (the canonical hostname)")
    internal: str
    listen_ip: str
    anycast_listen: str | None = Field(description="shared ip:port (traffic nodes)")
    guid: str
    data_dir: str
    log_file: str
    pid: int | None = None


class SessionPairInfo(_Model):
    """One synthetic customer/representative pair of ``atlas demo --sessions N``."""

    name: str
    representative: str = Field(description="the pair's representative account")
    rep_region: str
    rep_address: str = Field(description="the representative's source address")
    customer_region: str
    customer_address: str
    rep_pid: int | None = None
    customer_pid: int | None = None
    rep_log: str
    customer_log: str


class DemoInfo(_Model):
    version: int = SCHEMA_VERSION
    state: str = "stopped"
    orchestrator_pid: int | None = None
    updated_at: float = Field(default_factory=time.time)
    dir: str
    site: str
    port: int
    url: str = Field(description="https://<site>:<port>: the support site (master1)")
    login_url: str
    ca_file: str
    dns: DnsInfo
    method: str
    prefixes: bool
    selection: dict[str, object] = Field(default_factory=dict)
    revision: int = 0
    admin: Credentials
    api_account: ApiAccountInfo
    representative: RepresentativeInfo = Field(
        description="the demo representative: the test representative of the cluster test")
    session_representatives: list[RepresentativeInfo] = Field(
        default_factory=list, description="one account per synthetic session pair")
    sessions: list[SessionPairInfo] = Field(
        default_factory=list, description="the synthetic session pairs of this run")
    cluster_test_plan: str
    env_file: str
    topology_text: str
    topology_svg: str
    regions: dict[str, RegionInfo]
    nodes: list[NodeInfo]

    def node(self, name: str) -> NodeInfo:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


class StateError(ValueError):
    """demo.json is missing fields or is not JSON."""


def load_info(path: Path) -> DemoInfo:
    try:
        return DemoInfo.model_validate_json(path.read_bytes())
    except (OSError, ValidationError, ValueError) as exc:
        raise StateError(f"{path} is unreadable: {exc}") from exc


def save_info(path: Path, info: DemoInfo) -> None:
    """Write atomically, readable only by this user (it holds passwords)."""
    info.updated_at = time.time()
    tmp = path.with_name(path.name + ".tmp")
    write_private(tmp, (info.model_dump_json(indent=2) + "\n").encode())
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


def update_info(path: Path, change: Callable[[DemoInfo], None]) -> DemoInfo:
    """Read ``path``, apply ``change`` and write it back, with no other
    :func:`update_info` in between (another process's change is kept)."""
    with _locked(path):
        info = load_info(path)
        change(info)
        save_info(path, info)
        return info


__all__ = [
    "DEMO_FILE",
    "ApiAccountInfo",
    "Credentials",
    "DemoInfo",
    "DnsInfo",
    "NodeInfo",
    "RegionInfo",
    "RepresentativeInfo",
    "SessionPairInfo",
    "StateError",
    "load_info",
    "save_info",
    "update_info",
]
