"""``ATLAS_ANYCAST_LISTEN``: nodes sharing one address with SO_REUSEPORT (design §9)."""

from __future__ import annotations

import json
import random
import socket
import ssl
from pathlib import Path

import pytest

from atlas.node.init import init_node
from atlas.node.server import ANYCAST_ENV, ServeError, anycast_binding
from tests.support.nodes import NodeProcess, free_port


def test_binding_from_the_environment() -> None:
    assert anycast_binding({}) is None
    assert anycast_binding({ANYCAST_ENV: "  "}) is None
    assert anycast_binding({ANYCAST_ENV: "127.0.2.100:8443"}) == ("127.0.2.100", 8443)
    assert anycast_binding({ANYCAST_ENV: "[::1]:9443"}) == ("::1", 9443)


@pytest.mark.parametrize("text", ["anycast.example.test:443", "127.0.2.100", "127.0.2.100:0",
                                  "127.0.2.100:http"])
def test_bad_binding_is_refused_naming_the_variable(text: str) -> None:
    with pytest.raises(ServeError, match=ANYCAST_ENV):
        anycast_binding({ANYCAST_ENV: text})


def _healthz_name(ip: str, port: int, ctx: ssl.SSLContext) -> str:
    with socket.create_connection((ip, port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return str(json.loads(data.split(b"\r\n\r\n", 1)[1])["name"])


def test_two_nodes_share_the_anycast_address(tmp_path: Path) -> None:
    anycast_ip = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.100"
    anycast_port = free_port(anycast_ip)
    env = {ANYCAST_ENV: f"{anycast_ip}:{anycast_port}"}
    nodes = []
    for name in ("traffic-a", "traffic-b"):
        init_node(tmp_path / name, name=name, public=f"localhost:{free_port()}",
                  listen="127.0.0.1", admin_password="admin-password-1")
        nodes.append(NodeProcess(tmp_path / name, env=env))
    try:
        for n in nodes:
            n.start()
        ctx = ssl.create_default_context(cafile=str(nodes[0].ca_file))
        ctx.load_verify_locations(cafile=str(nodes[1].ca_file))
        seen = {_healthz_name(anycast_ip, anycast_port, ctx) for _ in range(40)}
        assert seen == {"traffic-a", "traffic-b"}  # the kernel spreads connections
        nodes[0].stop()
        assert {_healthz_name(anycast_ip, anycast_port, ctx) for _ in range(10)} == {
            "traffic-b"}
    finally:
        for n in nodes:
            n.stop()
    logs = nodes[1].logs()
    assert f"https://{anycast_ip}:{anycast_port}" in logs
