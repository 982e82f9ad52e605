"""``/api/v1`` in process: the route framework, auth, errors, ETags and the OpenAPI document."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel, ConfigDict, Field

from atlas.node.app import NODE, build_app
from atlas.node.init import init_node
from atlas.node.runtime import Node
from atlas.store.api_accounts import Permission, create_account, issue_token
from atlas.web import auth
from atlas.web.api_v1 import ApiContext, ApiRouter, conflict, not_found
from atlas.web.api_v1.openapi import build_document
from atlas.web.api_v1.routing import RouteDefinitionError
from atlas.web.auth import Principal, register_session_authenticator
from tests.support.fuzz import schemathesis_config


@pytest.fixture
def node(tmp_path: Path) -> Node:
    root = tmp_path / "node"
    init_node(root, name="n1", public="n1.example.test:4443",
              internal="n1.internal.example.test:8443", listen="127.0.0.1",
              admin_password="correct horse battery")
    n = Node(root)
    yield n
    n.close()


@pytest.fixture
async def client(node: Node) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(build_app(node))) as c:
        yield c


def token_for(node: Node, *perms: Permission) -> dict[str, str]:
    acc = create_account(node.db, "acct", frozenset(perms)).account
    return {"Authorization": f"Bearer {issue_token(node.db, acc)[0]}"}


async def error_of(r, status: int) -> dict[str, object]:
    assert r.status == status, await r.text()
    assert r.content_type == "application/json"
    body = await r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert isinstance(err["code"], str) and isinstance(err["message"], str) and err["message"]
    return err


# --- the built-in endpoints --------------------------------------------------------------
async def test_get_node(client, node) -> None:
    r = await client.get("/api/v1/node", headers=token_for(node, Permission.CONFIG_READ))
    assert r.status == 200
    assert r.headers["Cache-Control"] == "no-store"
    body = await r.json()
    assert body["guid"] == node.identity.guid
    assert body["name"] == "n1"
    assert body["version"] == node.software_version
    assert body["public_address"] == "n1.example.test:4443"
    assert body["internal_address"] == "n1.internal.example.test:8443"
    assert body["role"] == "standalone"
    assert body["failover_role"] == "none"
    assert 0 <= body["uptime_seconds"] < 600


async def test_get_health(client, node) -> None:
    node.db.set_setting("last_data_sync_time", "1700000000")
    node.db.set_setting("last_data_sync_status", "ok")
    r = await client.get("/api/v1/health", headers=token_for(node, Permission.CONFIG_WRITE))
    body = await r.json()
    assert body["status"] == "ok" and body["guid"] == node.identity.guid
    assert body["last_data_sync"] == {"time": "2023-11-14T22:13:20Z", "status": "ok"}


async def test_auth_errors(client, node) -> None:
    err = await error_of(await client.get("/api/v1/node"), 401)
    assert err["code"] == "unauthorized" and "/oauth2/token" in err["message"]
    r = await client.get("/api/v1/node", headers={"Authorization": "Bearer forged"})
    await error_of(r, 401)
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    expired = token_for(node, Permission.CONFIG_READ)
    node.db.execute("UPDATE api_tokens SET expires_at = ?", (time.time() - 1,))
    err = await error_of(await client.get("/api/v1/node", headers=expired), 401)
    assert "expired" in str(err["message"])
    err = await error_of(
        await client.get("/api/v1/node", headers=token_for(node, Permission.COMMAND_FULL)), 403)
    assert err["code"] == "forbidden" and "config:read" in str(err["message"])


async def test_unknown_path_and_method(client, node) -> None:
    h = token_for(node, Permission.CONFIG_WRITE)
    err = await error_of(await client.get("/api/v1/nothing/here", headers=h), 404)
    assert err["code"] == "not_found"
    r = await client.delete("/api/v1/node", headers=h)
    err = await error_of(r, 405)
    assert r.headers["Allow"] == "GET"


async def test_session_authenticator_extension_point(client, node, monkeypatch) -> None:
    monkeypatch.setattr(auth, "_session_authenticators", [])
    calls: list[str] = []

    async def fake_session(request: web.Request) -> Principal | None:
        calls.append(request.path)
        ok = request.cookies.get("s") == "good" and request.headers.get("X-CSRF-Token") == "t"
        return Principal("session", "admin", frozenset(Permission)) if ok else None

    register_session_authenticator(fake_session)
    register_session_authenticator(fake_session)  # idempotent
    assert auth._session_authenticators == [fake_session]
    r = await client.get("/api/v1/node", headers={"Cookie": "s=good", "X-CSRF-Token": "t"})
    assert r.status == 200
    # the cookie alone never authenticates: the authenticator is not even asked
    calls.clear()
    await error_of(await client.get("/api/v1/node", headers={"Cookie": "s=good"}), 401)
    assert calls == []
    err = await error_of(
        await client.get("/api/v1/node", headers={"Cookie": "s=good", "X-CSRF-Token": "bad"}),
        401)
    assert "session" in str(err["message"])
    # the Command API takes bearer tokens only
    r = await client.get("/api/command?action=check_health",
                         headers={"Cookie": "s=good", "X-CSRF-Token": "t"})
    assert r.status == 401


async def test_openapi_document(client) -> None:
    r = await client.get("/api/v1/openapi.json")  # no token needed
    assert r.status == 200
    doc = await r.json()
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    for name in ("NodeInfo", "Health", "ErrorBody", "ErrorDetail"):
        assert name in schemas
    sec = doc["components"]["securitySchemes"]
    assert sec["bearerAuth"] == {"type": "http", "scheme": "bearer",
                                 "description": sec["bearerAuth"]["description"]}
    assert sec["oauth2"]["flows"]["clientCredentials"]["tokenUrl"] == "/oauth2/token"
    op = doc["paths"]["/api/v1/node"]["get"]
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/NodeInfo"}
    assert op["responses"]["401"] == {"$ref": "#/components/responses/Unauthorized"}
    assert {"oauth2": ["config:read"]} in op["security"]
    assert_valid_openapi(doc)


def assert_valid_openapi(doc: dict[str, object]) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(doc)
    # every $ref resolves inside the document
    import json
    import re
    text = json.dumps(doc)
    for ref in set(re.findall(r'"\$ref": "#/([^"]+)"', text)):
        node: object = doc
        for part in ref.split("/"):
            assert isinstance(node, dict) and part in node, ref
            node = node[part]


# --- the framework, on a router of its own -----------------------------------------------
class TrafficNode(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=64)]
    accepting: bool = True


class ClusterEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    traffic_nodes: list[TrafficNode]


class ClusterOut(BaseModel):
    revision: int
    names: list[str]


class Page(BaseModel):
    limit: Annotated[int, Field(ge=1, le=100)] = 10
    tag: list[str] = []


class NodePath(BaseModel):
    guid: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]


class Echo(BaseModel):
    limit: int
    tag: list[str]
    guid: str


def make_router(*, broken: bool = True) -> ApiRouter:
    api = ApiRouter()
    state = {"revision": 1, "names": ["tokyo"]}

    @api.route("GET", "/api/v1/cluster", summary="Cluster", response=ClusterOut, etag=True)
    async def get_cluster(ctx: ApiContext) -> ClusterOut:
        ctx.set_etag(f"rev-{state['revision']}")
        return ClusterOut(revision=state["revision"], names=state["names"])

    @api.route("PUT", "/api/v1/cluster", summary="Replace", body=ClusterEdit,
               response=ClusterOut, etag=True, errors=(409,))
    async def put_cluster(ctx: ApiContext, body: ClusterEdit) -> ClusterOut:
        ctx.check_if_match(f"rev-{state['revision']}")
        names = [n.name for n in body.traffic_nodes]
        if len(set(names)) != len(names):
            raise conflict("traffic node names must be unique")
        state["revision"] += 1
        state["names"] = names
        ctx.set_etag(f"rev-{state['revision']}")
        return ClusterOut(revision=state["revision"], names=names)

    if broken:
        @api.route("POST", "/api/v1/forgetful", summary="Forgets check_if_match", etag=True)
        async def forgetful(ctx: ApiContext) -> None:
            return None

        @api.route("GET", "/api/v1/wrong", summary="Returns the wrong type", response=Echo)
        async def wrong(ctx: ApiContext) -> Echo:
            return ClusterOut(revision=1, names=[])  # type: ignore[return-value]

    @api.route("GET", "/api/v1/nodes/{guid}", summary="Echo", response=Echo, query=Page,
               path_model=NodePath, errors=(404,))
    async def echo(ctx: ApiContext, query: Page, path: NodePath) -> Echo:
        if path.guid == "0" * 32:
            raise not_found("no such node")
        return Echo(limit=query.limit, tag=query.tag, guid=path.guid)

    @api.route("DELETE", "/api/v1/nodes/{guid}", summary="Delete", status=204)
    async def delete_node(ctx: ApiContext) -> None:
        assert ctx.path_params["guid"]

    return api


@pytest.fixture
async def fw(node: Node) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application()
    app[NODE] = node
    make_router().install(app, lambda a: None)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_validation_error_shape(fw, node) -> None:
    h = {**token_for(node, Permission.CONFIG_WRITE), "If-Match": "*"}
    r = await fw.put("/api/v1/cluster", headers=h, json={
        "traffic_nodes": [{"name": "ok"}, {"name": ""}, {"name": "x", "colour": "red"}]})
    err = await error_of(r, 422)
    assert err["code"] == "validation_error"
    fields = {f["field"]: f["message"] for f in err["fields"]}  # type: ignore[union-attr]
    assert set(fields) == {"traffic_nodes.1.name", "traffic_nodes.2.colour"}
    assert "traffic_nodes.1.name" in str(err["message"])
    err = await error_of(await fw.put("/api/v1/cluster", headers=h, json={}), 422)
    assert err["fields"] == [{"field": "traffic_nodes", "message": "this setting is required"}]


async def test_body_errors(fw, node) -> None:
    h = {**token_for(node, Permission.CONFIG_WRITE), "If-Match": "*"}
    err = await error_of(await fw.put("/api/v1/cluster", headers=h, data="{nope",
                                      ), 415)
    assert err["code"] == "unsupported_media_type"
    r = await fw.put("/api/v1/cluster", data="{nope",
                     headers={**h, "Content-Type": "application/json"})
    assert (await error_of(r, 400))["code"] == "invalid_json"
    r = await fw.put("/api/v1/cluster", data="",
                     headers={**h, "Content-Type": "application/json"})
    assert (await error_of(r, 400))["code"] == "invalid_json"
    big = b'{"traffic_nodes": [' + b'{"name": "a"},' * 400_000 + b'{"name": "b"}]}'
    r = await fw.put("/api/v1/cluster", data=big,
                     headers={**h, "Content-Type": "application/json"})
    assert (await error_of(r, 413))["code"] == "payload_too_large"


async def test_query_and_path_models(fw, node) -> None:
    h = token_for(node, Permission.CONFIG_READ)
    guid = "a" * 32
    r = await fw.get(f"/api/v1/nodes/{guid}?limit=5&tag=x&tag=y", headers=h)
    assert await r.json() == {"limit": 5, "tag": ["x", "y"], "guid": guid}
    r = await fw.get(f"/api/v1/nodes/{guid}", headers=h)
    assert (await r.json())["limit"] == 10
    err = await error_of(await fw.get(f"/api/v1/nodes/{guid}?limit=0", headers=h), 422)
    assert err["fields"][0]["field"] == "limit"  # type: ignore[index]
    err = await error_of(await fw.get(f"/api/v1/nodes/{guid}?limit=1&limit=2", headers=h), 400)
    assert "more than once" in str(err["message"])
    err = await error_of(await fw.get("/api/v1/nodes/XYZ", headers=h), 422)
    assert err["fields"][0]["field"] == "guid"  # type: ignore[index]
    await error_of(await fw.get(f"/api/v1/nodes/{'0' * 32}", headers=h), 404)


async def test_read_only_accounts_cannot_change_anything(fw, node) -> None:
    h = {**token_for(node, Permission.CONFIG_READ, Permission.COMMAND_FULL), "If-Match": "*"}
    r = await fw.put("/api/v1/cluster", headers=h, json={"traffic_nodes": []})
    err = await error_of(r, 403)
    assert "config:write" in str(err["message"])
    await error_of(await fw.delete(f"/api/v1/nodes/{'a' * 32}", headers=h), 403)
    r = await fw.delete(f"/api/v1/nodes/{'a' * 32}",
                        headers=token_for(node, Permission.CONFIG_WRITE))
    assert r.status == 204


async def test_etag_and_if_match(fw, node) -> None:
    h = token_for(node, Permission.CONFIG_WRITE)
    r = await fw.get("/api/v1/cluster", headers=h)
    etag = r.headers["ETag"]
    assert etag == '"rev-1"'
    r = await fw.get("/api/v1/cluster", headers={**h, "If-None-Match": etag})
    assert r.status == 304 and r.headers["ETag"] == etag
    body = {"traffic_nodes": [{"name": "tokyo"}, {"name": "berlin"}]}
    err = await error_of(await fw.put("/api/v1/cluster", headers=h, json=body), 428)
    assert "If-Match" in str(err["message"])
    err = await error_of(
        await fw.put("/api/v1/cluster", headers={**h, "If-Match": "rev-1"}, json=body), 400)
    assert err["code"] == "invalid_if_match"
    r = await fw.put("/api/v1/cluster", headers={**h, "If-Match": etag}, json=body)
    assert r.status == 200 and r.headers["ETag"] == '"rev-2"'
    assert (await r.json())["names"] == ["tokyo", "berlin"]
    # the same If-Match again is now stale
    r = await fw.put("/api/v1/cluster", headers={**h, "If-Match": etag}, json=body)
    err = await error_of(r, 412)
    assert err["code"] == "precondition_failed" and r.headers["ETag"] == '"rev-2"'
    # a weak tag never matches If-Match; a list with the current tag does
    await error_of(await fw.put("/api/v1/cluster", headers={**h, "If-Match": 'W/"rev-2"'},
                                json=body), 412)
    r = await fw.put("/api/v1/cluster", headers={**h, "If-Match": '"rev-0", "rev-2"'},
                     json=body)
    assert r.status == 200
    dup = {"traffic_nodes": [{"name": "a"}, {"name": "a"}]}
    err = await error_of(await fw.put("/api/v1/cluster", headers={**h, "If-Match": "*"},
                                      json=dup), 409)
    assert err["code"] == "conflict"


async def test_our_own_mistakes_are_500(fw, node) -> None:
    h = {**token_for(node, Permission.CONFIG_WRITE), "If-Match": "*"}
    err = await error_of(await fw.post("/api/v1/forgetful", headers=h), 500)
    assert err["code"] == "internal_error"
    await error_of(await fw.get("/api/v1/wrong", headers=h), 500)


def test_route_definition_errors() -> None:
    api = ApiRouter()

    async def h(ctx: ApiContext) -> None:
        return None

    with pytest.raises(RouteDefinitionError, match="config:write"):
        api.route("PUT", "/api/v1/x", summary="x", permission=Permission.CONFIG_READ)(h)
    with pytest.raises(RouteDefinitionError, match="takes no body"):
        api.route("GET", "/api/v1/x", summary="x", body=TrafficNode)(h)
    with pytest.raises(RouteDefinitionError, match="path_model"):
        api.route("GET", "/api/v1/x/{guid}", summary="x", path_model=Page)(h)
    with pytest.raises(RouteDefinitionError, match="start with"):
        api.route("GET", "/other", summary="x")(h)
    api.route("GET", "/api/v1/x", summary="x")(h)
    with pytest.raises(RouteDefinitionError, match="exists already"):
        api.route("GET", "/api/v1/y", summary="y")(h)


def test_framework_document_is_valid_openapi() -> None:
    router = make_router()
    doc = build_document(router.routes, title="t", version="1")
    assert_valid_openapi(doc)
    put = doc["paths"]["/api/v1/cluster"]["put"]
    assert put["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ClusterEdit"}
    assert {"name": "If-Match", "in": "header", "required": True} .items() <= {
        k: v for p in put["parameters"] for k, v in p.items() if p["name"] == "If-Match"}.items()
    assert set(put["responses"]) >= {"200", "400", "401", "403", "409", "412", "415", "422",
                                     "428"}
    assert "ETag" in put["responses"]["200"]["headers"]
    get = doc["paths"]["/api/v1/nodes/{guid}"]["get"]
    params = {(p["in"], p["name"]): p for p in get["parameters"]}
    assert params[("path", "guid")]["required"] is True
    assert params[("query", "limit")]["required"] is False
    assert params[("query", "limit")]["schema"]["maximum"] == 100
    assert "TrafficNode" in doc["components"]["schemas"]
    delete = doc["paths"]["/api/v1/nodes/{guid}"]["delete"]
    assert "204" in delete["responses"] and "content" not in delete["responses"]["204"]


async def test_fuzz_the_framework_from_its_document(node, tmp_path) -> None:
    """schemathesis against every kind of input the framework takes: no 5xx, answers as
    documented."""
    st = Path(sys.executable).with_name("schemathesis")
    if not st.exists():
        pytest.skip("schemathesis is not installed")
    router = make_router(broken=False)
    doc = build_document(router.routes, title="t", version="1")

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(doc)

    app = web.Application()
    app[NODE] = node
    router.install(app, lambda a: a.router.add_get("/api/v1/openapi.json", openapi))
    headers = token_for(node, Permission.CONFIG_WRITE)
    async with TestServer(app, host="127.0.0.1") as server:
        proc = await asyncio.create_subprocess_exec(
            str(st), "--config-file", str(schemathesis_config(tmp_path)), "run",
            f"http://127.0.0.1:{server.port}/api/v1/openapi.json",
            "--checks", "all", "--max-examples", "25", "--seed", "1",
            "--header", f"Authorization: {headers['Authorization']}",
            "--generation-database", "none", "--no-color", "--request-timeout", "10",
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 240)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert "No issues found" in text
