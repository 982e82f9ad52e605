"""The APIs of a real ``atlas serve`` process, over verified TLS.

An API account made with the ``atlas api-account`` CLI gets a token from
``/oauth2/token``, calls the Command API and /api/v1, and schemathesis fuzzes /api/v1
from its own OpenAPI document (no 5xx allowed). The node is stopped with SIGTERM and
must exit cleanly.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import aiohttp

from atlas.net.tls import client_context
from tests.support.fuzz import schemathesis_config, schemathesis_exe

NAMESPACE = "https://www.beyondtrust.com/namespaces/API/command"
FUZZ_EXAMPLES = "25"
FUZZ_TIMEOUT = 240


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atlas", *args], capture_output=True, text=True, timeout=60,
        check=False,
    )


def create_account(data_dir: Path, *perms: str) -> tuple[str, str]:
    args = ["api-account", "create", str(data_dir), "--name", "integration", "--json"]
    for p in perms:
        args += ["--permission", p]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    return created["client_id"], created["client_secret"]


def basic(cid: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{cid}:{secret}".encode()).decode()}


async def get_token(session: aiohttp.ClientSession, base: str, cid: str, secret: str) -> str:
    async with session.post(
        f"{base}/oauth2/token", data={"grant_type": "client_credentials"},
        headers=basic(cid, secret),
    ) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Cache-Control"] == "no-store"
        body = await r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    return str(body["access_token"])


def strip_namespaces(root: ET.Element) -> dict[str, ET.Element]:
    """Index elements by namespace-less tag, the way BeyondTrust integrations read them."""
    found: dict[str, ET.Element] = {}
    for el in root.iter():
        found.setdefault(el.tag.split("}")[-1], el)
    return found


async def test_real_node_apis(running_node) -> None:
    cid, secret = create_account(running_node.data_dir, "command:read", "config:read")
    base = running_node.url
    ssl_ctx = client_context(running_node.ca_file)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_ctx)) as s:
        token = await get_token(s, base, cid, secret)
        auth = {"Authorization": f"Bearer {token}"}

        async with s.get(f"{base}/api/command?action=check_health", headers=auth) as r:
            assert r.status == 200
            assert r.content_type == "text/xml"
            root = ET.fromstring(await r.read())  # noqa: S314 - our own node
        assert root.tag == f"{{{NAMESPACE}}}check_health"
        els = strip_namespaces(root)
        ident = running_node.info.identity
        assert els["appliance"].get("id") == ident.guid
        assert els["hostname"].text == "localhost"
        assert els["enabled"].text == "true"
        assert els["failover_role"].text == "none"

        async with s.get(f"{base}/api/v1/node", headers=auth) as r:
            assert r.status == 200
            assert (await r.json())["guid"] == ident.guid

        # a wrong secret gets no token
        async with s.post(f"{base}/oauth2/token", data={"grant_type": "client_credentials"},
                          headers=basic(cid, secret + "x")) as r:
            assert r.status == 401

        # revoking with the CLI while the node runs takes effect at once
        assert cli("api-account", "revoke", str(running_node.data_dir), cid).returncode == 0
        async with s.get(f"{base}/api/command?action=check_health", headers=auth) as r:
            assert r.status == 401

    assert running_node.stop() == 0, running_node.logs()


async def test_fuzz_api_v1_from_its_openapi_document(running_node, tmp_path: Path) -> None:
    st = schemathesis_exe()
    cid, secret = create_account(running_node.data_dir, "config:write", "command:full")
    ssl_ctx = client_context(running_node.ca_file)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_ctx)) as s:
        token = await get_token(s, running_node.url, cid, secret)
    r = subprocess.run(
        [st, "--config-file", str(schemathesis_config(tmp_path)), "run",
         f"{running_node.url}/api/v1/openapi.json",
         "--checks", "all", "--exclude-checks", "negative_data_rejection",
         "--max-examples", FUZZ_EXAMPLES, "--seed", "1",
         "--header", f"Authorization: Bearer {token}",
         "--tls-verify", str(running_node.ca_file), "--request-timeout", "10",
         "--generation-database", "none", "--no-color"],
        capture_output=True, text=True, timeout=FUZZ_TIMEOUT, check=False, cwd=tmp_path,
    )
    # Exit 0: no check failed. Warnings (e.g. routes that answer 404 for random names)
    # are not failures.
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert " passed" in r.stdout
    assert running_node.stop() == 0, running_node.logs()
