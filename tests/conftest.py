"""Shared fixtures: node data directories, real ``atlas serve`` processes, in-process apps.

* ``free_port()`` — a free loopback TCP port (also importable from tests.support.nodes).
* ``node_factory`` — ``make(name=…, admin_password=…, port=…) -> NodeInfo``: runs
  ``init_node`` in ``tmp_path`` (public ``localhost:PORT``, listen 127.0.0.1).
* ``node_runner`` — ``start(info=None, **make_kwargs) -> RunningNode``: a real
  ``python -m atlas serve`` subprocess, healthy over verified TLS before it is returned,
  always stopped at teardown (SIGTERM, then SIGKILL after a timeout).
* ``running_node`` — one such node, with the defaults.
* ``inprocess_node`` — the same app served in this process over TLS on a free port, for
  fast tests (``.node`` gives direct database access), plus ``.client()`` sessions.
* ``login_client`` — ``await login_client(inprocess_node, signed_in=True)``: a
  :class:`LoginClient` that reads forms' CSRF tokens and posts them, for /login pages.
"""

from __future__ import annotations

import html
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from atlas.net.tls import client_context, server_context
from atlas.node.app import build_app
from atlas.node.datadir import DataDir, Identity
from atlas.node.init import init_node
from atlas.node.runtime import Node
from tests.support.nodes import NodeProcess
from tests.support.nodes import free_port as _free_port

DEFAULT_ADMIN_PASSWORD = "correct horse battery staple"
ADMIN_USERNAME = "admin"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    return _free_port(host)


@dataclass(frozen=True)
class NodeInfo:
    """A node created by ``node_factory`` (not running)."""

    data_dir: Path
    name: str
    port: int
    admin_password: str
    admin_username: str = ADMIN_USERNAME

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def ca_file(self) -> Path:
        return DataDir(self.data_dir).ca_file

    @property
    def identity(self) -> Identity:
        return DataDir(self.data_dir).load_identity()

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the node's certificate against its own CA (never ``CERT_NONE``)."""
        return client_context(self.ca_file)


NodeFactory = Callable[..., NodeInfo]


@pytest.fixture
def node_factory(tmp_path: Path) -> NodeFactory:
    counter = iter(range(1, 1000))

    def make(
        name: str | None = None,
        *,
        admin_password: str = DEFAULT_ADMIN_PASSWORD,
        port: int | None = None,
        **init_kwargs: Any,
    ) -> NodeInfo:
        node_name = name or f"node-{next(counter)}"
        p = port or free_port()
        root = tmp_path / node_name
        init_node(root, name=node_name, public=f"localhost:{p}", listen="127.0.0.1",
                  admin_password=admin_password, **init_kwargs)
        return NodeInfo(root, node_name, p, admin_password)

    return make


@dataclass
class RunningNode:
    """A real ``atlas serve`` subprocess for ``info``."""

    info: NodeInfo
    process: NodeProcess = field(init=False)

    def __post_init__(self) -> None:
        self.process = NodeProcess(self.info.data_dir)

    @property
    def url(self) -> str:
        return self.info.url

    @property
    def ca_file(self) -> Path:
        return self.info.ca_file

    @property
    def data_dir(self) -> Path:
        return self.info.data_dir

    @property
    def admin_password(self) -> str:
        return self.info.admin_password

    @property
    def proc(self) -> Any:
        return self.process.proc

    def start(self, timeout: float = 30.0) -> RunningNode:
        self.process.start(wait=True, timeout=timeout)
        return self

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds."""
        return self.process.stop(timeout=timeout)

    def restart(self, timeout: float = 30.0) -> RunningNode:
        self.stop()
        return self.start(timeout)

    def logs(self) -> str:
        return self.process.logs()


@pytest.fixture
def node_runner(node_factory: NodeFactory) -> Iterator[Callable[..., RunningNode]]:
    started: list[RunningNode] = []

    def start(info: NodeInfo | None = None, **make_kwargs: Any) -> RunningNode:
        node = RunningNode(info or node_factory(**make_kwargs))
        started.append(node)
        return node.start()

    yield start
    for node in reversed(started):
        node.stop()


@pytest.fixture
def running_node(node_runner: Callable[..., RunningNode]) -> RunningNode:
    return node_runner()


# --- in process ----------------------------------------------------------------------


@dataclass
class InProcessNode:
    """``build_app(Node(dir))`` served over TLS at ``https://localhost:PORT`` in this process."""

    info: NodeInfo
    node: Node
    server: TestServer
    _sessions: list[aiohttp.ClientSession] = field(default_factory=list)

    @property
    def app(self) -> Any:
        return self.server.app

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.server.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def client(self) -> aiohttp.ClientSession:
        """A new client with its own cookie jar, verifying TLS against the node's CA."""
        session = aiohttp.ClientSession(
            base_url=self.base_url,
            connector=aiohttp.TCPConnector(ssl=self.info.ssl_context()),
        )
        self._sessions.append(session)
        return session

    async def close(self) -> None:
        for s in self._sessions:
            await s.close()
        await self.server.close()
        self.node.close()


@pytest.fixture
async def inprocess_node(node_factory: NodeFactory) -> AsyncIterator[InProcessNode]:
    """The node served in this process on its own public port (stream grants and key
    URLs name the node's public address)."""
    info = node_factory()
    node = Node(info.data_dir)
    dd = DataDir(info.data_dir)
    server = TestServer(build_app(node), host="localhost", port=info.port)
    await server.start_server(ssl=server_context(dd.cert_file, dd.key_file))
    running = InProcessNode(info, node, server)
    try:
        yield running
    finally:
        await running.close()


# --- a client for /login pages -------------------------------------------------------

_CSRF_RE = re.compile(r'name="csrf_token" value="([^"]*)"')


def csrf_token_in(page: str) -> str:
    """The ``csrf_token`` hidden field of the first form in ``page``."""
    m = _CSRF_RE.search(page)
    if m is None:
        raise AssertionError("no csrf_token field in the page")
    return html.unescape(m.group(1))


@dataclass
class Page:
    status: int
    url: str
    text: str
    headers: Any


@dataclass
class LoginClient:
    """Drives /login like a browser without JavaScript: GET a page, post its form."""

    session: aiohttp.ClientSession
    last_token: str = ""

    async def get(self, path: str, **kwargs: Any) -> Page:
        async with self.session.get(path, **kwargs) as r:
            page = Page(r.status, str(r.url), await r.text(), r.headers)
        if page.status == 200 and 'name="csrf_token"' in page.text:
            self.last_token = csrf_token_in(page.text)
        return page

    async def post(
        self, path: str, data: dict[str, str], *, csrf: bool | str = True, **kwargs: Any
    ) -> Page:
        """POST ``data``; with the CSRF token of the last page seen (``csrf=True``), a given
        one (a string) or none (``csrf=False``). Redirects are followed."""
        body = dict(data)
        if csrf is True:
            body["csrf_token"] = self.last_token
        elif isinstance(csrf, str):
            body["csrf_token"] = csrf
        async with self.session.post(path, data=body, **kwargs) as r:
            page = Page(r.status, str(r.url), await r.text(), r.headers)
        if 'name="csrf_token"' in page.text:
            self.last_token = csrf_token_in(page.text)
        return page

    async def login(self, username: str, password: str, next_path: str = "") -> Page:
        await self.get("/login" + (f"?next={next_path}" if next_path else ""))
        data = {"username": username, "password": password}
        if next_path:
            data["next"] = next_path
        return await self.post("/login", data)

    def cookie(self, name: str) -> str | None:
        for c in self.session.cookie_jar:
            if c.key == name:
                return c.value
        return None


LoginClientFactory = Callable[..., Awaitable[LoginClient]]


@pytest.fixture
def login_client() -> LoginClientFactory:
    async def make(target: InProcessNode, *, signed_in: bool = True) -> LoginClient:
        client = LoginClient(target.client())
        if signed_in:
            page = await client.login(target.info.admin_username, target.info.admin_password)
            assert page.status == 200, page.text[:500]
            assert "/login/" in page.url
        return client

    return make
