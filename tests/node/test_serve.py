"""``atlas serve``: real processes, real TLS, clean shutdown, clear refusals."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from atlas.node.init import init_node
from tests.support.nodes import NodeProcess, free_port


def make_node(tmp_path: Path, name: str = "master1", port: int | None = None) -> NodeProcess:
    port = port or free_port()
    init_node(tmp_path / name, name=name, public=f"localhost:{port}", listen="127.0.0.1",
              admin_password="admin-password-1")
    return NodeProcess(tmp_path / name)


def test_init_serve_healthz_over_verified_tls_then_sigterm(tmp_path: Path) -> None:
    node = make_node(tmp_path).start()
    try:
        health = node.wait_healthy()
        assert health["status"] == "ok" and health["name"] == "master1"
        assert health["guid"] == node.identity.guid
        assert (node.data_dir / "atlas.pid").exists()
    finally:
        code = node.stop(signal.SIGTERM)
    assert code == 0
    assert not (node.data_dir / "atlas.pid").exists()
    logs = [json.loads(line) for line in node.logs().splitlines() if line.startswith("{")]
    assert [e["msg"] for e in logs][-2:] == ["shutting down", "stopped"]


def test_sigint_also_shuts_down_cleanly(tmp_path: Path) -> None:
    node = make_node(tmp_path).start()
    assert node.stop(signal.SIGINT) == 0


def test_untrusted_certificate_is_refused_by_clients(tmp_path: Path) -> None:
    """A client that does not trust the node's CA cannot talk to it."""
    import ssl
    import urllib.request

    node = make_node(tmp_path).start()
    try:
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(f"{node.url}/healthz", context=ssl.create_default_context(),
                                   timeout=5)
    finally:
        node.stop()


def test_refuses_to_start_when_port_taken(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        node = make_node(tmp_path, port=port)
        result = subprocess.run([sys.executable, "-m", "atlas", "serve", str(node.data_dir)],
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"127.0.0.1:{port} is already in use" in result.stderr


def test_refuses_to_start_with_unreadable_certificate(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    (node.data_dir / "tls" / "cert.pem").write_text("not a certificate")
    result = subprocess.run([sys.executable, "-m", "atlas", "serve", str(node.data_dir)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "cannot load the TLS certificate" in result.stderr


def test_refuses_to_start_without_a_node(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "atlas", "serve", str(tmp_path / "none")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "is not an Atlas node" in result.stderr and "atlas init" in result.stderr


def test_metrics_are_prometheus_text(tmp_path: Path) -> None:
    import urllib.request

    node = make_node(tmp_path).start()
    try:
        ident = node.identity
        ctx = node.ssl_context()
        with urllib.request.urlopen(f"https://localhost:{ident.public.port}/metrics",
                                    context=ctx, timeout=5) as resp:
            text = resp.read().decode()
            assert resp.headers["Content-Type"].startswith("text/plain")
        assert f'atlas_node_info{{guid="{ident.guid}",name="master1"' in text
    finally:
        node.stop()


def test_serves_internal_address_when_it_differs(tmp_path: Path) -> None:
    import urllib.request

    public, internal = free_port(), free_port()
    init_node(tmp_path / "t1", name="t1", public=f"localhost:{public}",
              internal=f"localhost:{internal}", listen="127.0.0.1")
    node = NodeProcess(tmp_path / "t1").start()
    try:
        for port in (public, internal):
            with urllib.request.urlopen(f"https://localhost:{port}/healthz",
                                        context=node.ssl_context(), timeout=5) as resp:
                assert json.loads(resp.read())["name"] == "t1"
    finally:
        node.stop()


def test_second_serve_of_a_running_node_fails_and_keeps_its_pid_file(tmp_path: Path) -> None:
    node = make_node(tmp_path).start()
    try:
        pid_file = node.data_dir / "atlas.pid"
        before = pid_file.read_text()
        result = subprocess.run([sys.executable, "-m", "atlas", "serve", str(node.data_dir)],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and "already in use" in result.stderr
        assert pid_file.read_text() == before
        node.wait_healthy()
    finally:
        node.stop()
