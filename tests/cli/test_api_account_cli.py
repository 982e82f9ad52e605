"""``atlas api-account create|list|revoke`` on a node's data directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from atlas.cli import app
from atlas.node.init import init_node
from atlas.store.api_accounts import authenticate_client, get_account_by_client_id
from atlas.store.db import Database

runner = CliRunner()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "node"
    init_node(root, name="n1", public="n1.example.test:4443", listen="127.0.0.1",
              admin_password="correct horse battery")
    return root


def run(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, r.output


def test_create_prints_credentials_once_and_they_work(data_dir: Path) -> None:
    code, output = run("api-account", "create", str(data_dir), "--name", "monitoring",
                       "--permission", "command:full", "--permission", "config:write")
    assert code == 0, output
    client_id = next(line.split()[2] for line in output.splitlines()
                     if line.strip().startswith("client id"))
    secret = next(line.split()[2] for line in output.splitlines()
                  if line.strip().startswith("client secret"))
    assert "shown once" in output
    assert "command:full, config:write" in output
    db = Database(data_dir / "atlas.db")
    try:
        acc = authenticate_client(db, client_id, secret)
        assert acc is not None and acc.name == "monitoring"
    finally:
        db.close()
    # list never shows the secret
    code, listing = run("api-account", "list", str(data_dir))
    assert code == 0
    assert client_id in listing and "monitoring" in listing and "active" in listing
    assert secret not in listing


def test_json_output_for_scripts(data_dir: Path) -> None:
    code, output = run("api-account", "create", str(data_dir), "--name", "ci",
                       "--permission", "config:read", "--json")
    assert code == 0
    created = json.loads(output)
    assert created["permissions"] == ["config:read"] and created["client_secret"]
    code, output = run("api-account", "list", str(data_dir), "--json")
    listed = json.loads(output)
    assert [a["client_id"] for a in listed] == [created["client_id"]]
    assert "client_secret" not in listed[0]


def test_revoke(data_dir: Path) -> None:
    _, output = run("api-account", "create", str(data_dir), "--name", "ci",
                    "--permission", "command:read", "--json")
    client_id = json.loads(output)["client_id"]
    code, output = run("api-account", "revoke", str(data_dir), client_id)
    assert code == 0 and "Revoked" in output
    db = Database(data_dir / "atlas.db")
    try:
        acc = get_account_by_client_id(db, client_id)
        assert acc is not None and not acc.active
    finally:
        db.close()
    code, output = run("api-account", "revoke", str(data_dir), client_id)
    assert code == 0 and "already revoked" in output
    code, output = run("api-account", "list", str(data_dir))
    assert "revoked" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "x", "--permission", "command:write"], "'command:write' is unknown"),
        (["--name", "x", "--permission", "admin"], "allowed: command:read"),
        (["--name", "  ", "--permission", "command:read"], "--name: must not be empty"),
        (["--name", "x" * 65, "--permission", "command:read"], "at most 64"),
    ],
)
def test_create_refuses_bad_input(data_dir: Path, args: list[str], message: str) -> None:
    code, output = run("api-account", "create", str(data_dir), *args)
    assert code == 2
    assert message in " ".join(output.split())
    _, listing = run("api-account", "list", str(data_dir), "--json")
    assert json.loads(listing) == []


def test_permission_is_required(data_dir: Path) -> None:
    code, _ = run("api-account", "create", str(data_dir), "--name", "x")
    assert code != 0


def test_missing_or_foreign_data_dir(tmp_path: Path) -> None:
    code, output = run("api-account", "list", str(tmp_path / "nope"))
    assert code == 2 and "no such directory" in output
    code, output = run("api-account", "create", str(tmp_path), "--name", "x",
                       "--permission", "command:read")
    assert code == 2 and "not an Atlas node" in output
    assert not (tmp_path / "atlas.db").exists()  # nothing was created there


def test_revoke_unknown_client(data_dir: Path) -> None:
    code, output = run("api-account", "revoke", str(data_dir), "f" * 32)
    assert code == 2 and "no API account" in output
