"""``/api/command`` in process: BeyondTrust-shaped XML, errors, permissions, parameters."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from atlas.node.app import build_app
from atlas.node.init import init_node
from atlas.node.runtime import Node
from atlas.store.api_accounts import Permission, create_account, issue_token, revoke_account
from atlas.web import command_api
from atlas.web.command_api import (
    NAMESPACE,
    ParamError,
    bool_param,
    element,
    int_param,
    register_action,
    registered_actions,
    str_param,
    sub,
)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    root = tmp_path / "node"
    init_node(root, name="n1", public="n1.example.test:4443", listen="127.0.0.1",
              admin_password="correct horse battery")
    n = Node(root)
    yield n
    n.close()


@pytest.fixture
async def client(node: Node) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(build_app(node))) as c:
        yield c


def token_for(node: Node, *perms: Permission) -> str:
    acc = create_account(node.db, "acct", frozenset(perms)).account
    return issue_token(node.db, acc)[0]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def strip(el: ET.Element) -> ET.Element:
    """Drop namespaces, as BeyondTrust integrations do (``tag.split('}')[-1]``)."""
    for e in el.iter():
        e.tag = e.tag.split("}")[-1]
    return el


async def xml(r) -> ET.Element:
    assert r.content_type == "text/xml"
    body = await r.read()
    root = ET.fromstring(body)  # noqa: S314 - our own server
    assert root.tag == f"{{{NAMESPACE}}}" + root.tag.split("}")[-1]  # default namespace
    assert f'xmlns="{NAMESPACE}"'.encode() in body
    return strip(root)


async def error_of(r, status: int) -> str:
    assert r.status == status, await r.text()
    root = await xml(r)
    assert root.tag == "error" and len(root) == 0
    assert root.text
    return root.text


@pytest.fixture
def scratch_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a test register actions without leaking them into other tests."""
    monkeypatch.setattr(command_api, "_ACTIONS", dict(command_api._ACTIONS))


# --- check_health / get_api_info -------------------------------------------------------
async def test_check_health_shape(client, node) -> None:
    t = token_for(node, Permission.COMMAND_READ)
    r = await client.get("/api/command?action=check_health", headers=bearer(t))
    assert r.status == 200
    assert r.headers["Cache-Control"] == "no-store"
    root = await xml(r)
    assert root.tag == "check_health"
    appliance = root.find("appliance")
    assert appliance is not None
    assert appliance.get("id") == node.identity.guid
    assert appliance.findtext("hostname") == "n1.example.test"
    assert appliance.findtext("version") == node.software_version
    assert appliance.findtext("enabled") == "true"
    assert appliance.findtext("success") == "1"
    assert appliance.findtext("failover_role") == "none"
    assert appliance.find("last_data_sync_time") is None
    assert appliance.find("last_data_sync_status") is None


async def test_check_health_reports_last_sync_and_role(client, node) -> None:
    node.db.set_setting("failover_role", "primary")
    node.db.set_setting("last_data_sync_time", "1700000000")
    node.db.set_setting("last_data_sync_status", "Data Sync: Finished")
    t = token_for(node, Permission.COMMAND_READ)
    r = await client.post("/api/command", data={"action": "check_health"}, headers=bearer(t))
    appliance = (await xml(r)).find("appliance")
    assert appliance is not None
    assert appliance.findtext("failover_role") == "primary"
    sync = appliance.find("last_data_sync_time")
    assert sync is not None and sync.get("ts") == "1700000000"
    assert sync.text == "2023-11-14T22:13:20+00:00"
    assert appliance.findtext("last_data_sync_status") == "Data Sync: Finished"


async def test_get_api_info(client, node) -> None:
    t = token_for(node, Permission.COMMAND_FULL, Permission.CONFIG_READ)
    r = await client.get("/api/command", params={"action": "get_api_info"}, headers=bearer(t))
    root = await xml(r)
    assert root.tag == "get_api_info"
    assert root.findtext("api_version") == "1.0"
    assert abs(int(root.findtext("timestamp") or 0) - time.time()) < 60
    perms = root.find("permissions")
    assert perms is not None
    assert perms.findtext("perm_command") == "full_access"
    assert perms.findtext("perm_configuration") == "1"
    assert {p.text for p in perms.findall("permission")} == {
        "command:full", "command:read", "config:read"}


async def test_get_api_info_read_only(client, node) -> None:
    t = token_for(node, Permission.COMMAND_READ)
    root = await xml(await client.get("/api/command?action=get_api_info", headers=bearer(t)))
    assert root.findtext("permissions/perm_command") == "read_only"
    assert root.findtext("permissions/perm_configuration") == "0"


# --- authentication ---------------------------------------------------------------------
async def test_missing_token_is_401_with_a_clear_body(client) -> None:
    r = await client.get("/api/command?action=check_health")
    msg = await error_of(r, 401)
    assert "/oauth2/token" in msg and "Bearer" in msg
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="atlas"'


async def test_expired_token_is_401_and_says_so(client, node) -> None:
    t = token_for(node, Permission.COMMAND_READ)
    node.db.execute("UPDATE api_tokens SET expires_at = ?", (time.time() - 1,))
    r = await client.get("/api/command?action=check_health", headers=bearer(t))
    assert "expired" in await error_of(r, 401)
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    "auth", ["Bearer forged-token", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer " + "x" * 600,
             "Bearer caf\u00e9"])
async def test_forged_or_malformed_token_is_401(client, node, auth) -> None:
    token_for(node, Permission.COMMAND_FULL)
    r = await client.get("/api/command?action=check_health",
                         headers={"Authorization": auth.encode().decode("latin-1")})
    await error_of(r, 401)


async def test_revoked_account_token_is_401(client, node) -> None:
    acc = create_account(node.db, "x", frozenset({Permission.COMMAND_READ})).account
    t = issue_token(node.db, acc)[0]
    revoke_account(node.db, acc.id)
    await error_of(await client.get("/api/command?action=check_health", headers=bearer(t)), 401)


async def test_unauthenticated_caller_learns_nothing_about_actions(client) -> None:
    await error_of(await client.get("/api/command?action=nonsense"), 401)


# --- actions and permissions -----------------------------------------------------------
async def test_unknown_and_missing_action(client, node) -> None:
    t = token_for(node, Permission.COMMAND_FULL)
    msg = await error_of(await client.get("/api/command?action=nope", headers=bearer(t)), 400)
    assert "unknown action 'nope'" in msg and "check_health" in msg
    msg = await error_of(await client.get("/api/command", headers=bearer(t)), 400)
    assert "'action' is required" in msg


async def test_config_only_account_is_403(client, node) -> None:
    t = token_for(node, Permission.CONFIG_WRITE)
    msg = await error_of(
        await client.get("/api/command?action=check_health", headers=bearer(t)), 403)
    assert "command:read" in msg


async def test_full_actions_need_command_full(client, node, scratch_actions) -> None:
    async def set_thing(request: web.Request, params: Mapping[str, str]) -> ET.Element:
        return element("set_thing")

    register_action("set_thing", Permission.COMMAND_FULL, set_thing)
    ro = token_for(node, Permission.COMMAND_READ)
    msg = await error_of(await client.get("/api/command?action=set_thing", headers=bearer(ro)),
                         403)
    assert "command:full" in msg
    full = token_for(node, Permission.COMMAND_FULL)
    r = await client.post("/api/command?action=set_thing", headers=bearer(full))
    assert r.status == 200 and (await xml(r)).tag == "set_thing"


@pytest.mark.parametrize("name", sorted(registered_actions()))
async def test_every_action_refuses_unknown_parameters(client, node, name) -> None:
    t = token_for(node, Permission.COMMAND_FULL, Permission.CONFIG_WRITE)
    r = await client.get(f"/api/command?action={name}&bogus=1", headers=bearer(t))
    msg = await error_of(r, 400)
    assert "'bogus'" in msg and name in msg


async def test_request_level_parameter_errors(client, node) -> None:
    t = token_for(node, Permission.COMMAND_FULL)
    h = bearer(t)
    # the same parameter twice with different values
    r = await client.get("/api/command?action=check_health&action=get_api_info", headers=h)
    assert "more than once" in await error_of(r, 400)
    # query and form disagree
    r = await client.post("/api/command?action=check_health", data={"action": "x"}, headers=h)
    assert "more than once" in await error_of(r, 400)
    # a JSON body is not how the Command API takes parameters
    r = await client.post("/api/command", json={"action": "check_health"}, headers=h)
    assert "form" in await error_of(r, 400)
    r = await client.get("/api/command", params={"action": "check_health", "x": "y" * 5000},
                         headers=h)
    assert "too long" in await error_of(r, 400)


async def test_other_methods_are_405_xml(client, node) -> None:
    t = token_for(node, Permission.COMMAND_FULL)
    r = await client.put("/api/command?action=check_health", headers=bearer(t))
    await error_of(r, 405)
    assert r.headers["Allow"] == "GET, POST"


async def test_handler_crash_is_a_500_error_element(client, node, scratch_actions) -> None:
    async def broken(request: web.Request, params: Mapping[str, str]) -> ET.Element:
        raise RuntimeError("boom")

    register_action("broken", Permission.COMMAND_READ, broken)
    t = token_for(node, Permission.COMMAND_READ)
    msg = await error_of(await client.get("/api/command?action=broken", headers=bearer(t)), 500)
    assert "boom" not in msg


# --- typed parameters --------------------------------------------------------------------
async def test_typed_params_in_an_action(client, node, scratch_actions) -> None:
    async def generate(request: web.Request, params: Mapping[str, str]) -> ET.Element:
        ttl = int_param(params, "ttl", default=3600, min=60, max=86400)
        kind = str_param(params, "type", required=True, choices=("support",))
        urgent = bool_param(params, "urgent")
        root = element("generate")
        sub(root, "ttl", ttl)
        sub(root, "type", kind)
        sub(root, "urgent", urgent)
        return root

    register_action("generate", Permission.COMMAND_FULL, generate,
                    params=("ttl", "type", "urgent"))
    h = bearer(token_for(node, Permission.COMMAND_FULL))
    ok = await xml(await client.get("/api/command?action=generate&type=support&ttl=120"
                                    "&urgent=1", headers=h))
    assert [ok.findtext(k) for k in ("ttl", "type", "urgent")] == ["120", "support", "true"]
    cases = {
        "type=support&ttl=59": "'ttl' must be >= 60 and <= 86400, got 59",
        "type=support&ttl=abc": "'ttl' must be an integer",
        "type=support&ttl=1e3": "'ttl' must be an integer",
        "ttl=120": "'type' is required",
        "type=presentation": "'type' must be one of support",
        "type=support&urgent=maybe": "'urgent' must be 1 or 0",
    }
    for query, expected in cases.items():
        r = await client.get(f"/api/command?action=generate&{query}", headers=h)
        assert expected in await error_of(r, 400), query


def test_param_helpers_directly() -> None:
    assert int_param({}, "n") is None
    assert int_param({"n": ""}, "n", default=5) == 5
    assert int_param({"n": "-3"}, "n", min=-5) == -3
    with pytest.raises(ParamError, match="'n' is required"):
        int_param({}, "n", required=True)
    with pytest.raises(ParamError, match="must be <= 9"):
        int_param({"n": "10"}, "n", max=9)
    with pytest.raises(ParamError, match="integer"):
        int_param({"n": "\u0661"}, "n")  # Arabic-Indic digit: int() would take it
    assert bool_param({"b": "true"}, "b") is True
    assert bool_param({"b": "0"}, "b") is False
    assert bool_param({}, "b", default=None) is None
    assert str_param({"s": "x"}, "s", default="y") == "x"
    with pytest.raises(ParamError, match="at most 3"):
        str_param({"s": "long"}, "s", max_length=3)


def test_register_action_guards() -> None:
    async def h(request: web.Request, params: Mapping[str, str]) -> ET.Element:
        return element("x")

    with pytest.raises(ValueError, match="command:read or command:full"):
        register_action("x_bad_perm", Permission.CONFIG_READ, h)
    with pytest.raises(ValueError, match="lower-case"):
        register_action("Bad Name", Permission.COMMAND_READ, h)
    with pytest.raises(ValueError, match="already registered"):
        register_action("check_health", Permission.COMMAND_READ, h)


def test_xml_text_is_sanitised_and_escaped() -> None:
    root = element("r")
    sub(root, "name", "a<b>&\x01c", id='"q"')
    out = command_api.render(root)
    parsed = strip(ET.fromstring(out))  # noqa: S314
    assert parsed.findtext("name") == "a<b>&\ufffdc"
    assert parsed.find("name").get("id") == '"q"'  # type: ignore[union-attr]
