"""Fuzz ``/api/v1/cluster`` with schemathesis from its own OpenAPI document: no 5xx, and
every answer as documented."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from atlas.node import cluster
from atlas.node.app import build_app
from atlas.node.init import init_node
from atlas.node.runtime import Node
from atlas.store.api_accounts import Permission, create_account, issue_token
from tests.support.fuzz import schemathesis_config

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    root = tmp_path / "master1"
    init_node(root, name="master1", public="master1.example.test:4443",
              listen="127.0.0.1", admin_password="correct horse battery")
    n = Node(root)
    cluster.create_cluster(n, "support.example.test", traffic_nodes=[
        {"name": "tokyo", "public": "tokyo.example.test:443", "prefixes": ["10.30.0.0/16"]},
        {"name": "lima", "public": "lima.example.test:443"},
    ])
    yield n
    n.close()


async def test_fuzz_the_cluster_api(node: Node, tmp_path: Path) -> None:
    st = Path(sys.executable).with_name("schemathesis")
    if not st.exists():
        pytest.skip("schemathesis is not installed")
    account = create_account(node.db, "fuzz", frozenset({Permission.CONFIG_WRITE})).account
    token = issue_token(node.db, account)[0]
    async with TestServer(build_app(node), host="127.0.0.1") as server:
        proc = await asyncio.create_subprocess_exec(
            str(st), "--config-file", str(schemathesis_config(tmp_path)), "run",
            f"http://127.0.0.1:{server.port}/api/v1/openapi.json",
            "--include-path-regex", "^/api/v1/cluster",
            "--checks", "all", "--exclude-checks", "negative_data_rejection",
            "--max-examples", "30", "--seed", "1",
            "--header", f"Authorization: Bearer {token}",
            "--generation-database", "none", "--no-color", "--request-timeout", "20",
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 500)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-8000:]
    # Warnings are fine (most generated hostnames are refused; disable empties the
    # cluster early, so later document reads are 404): failures are not.
    summary = text[text.index("Test cases:"):]
    assert "passed" in summary and "failed" not in summary, summary
