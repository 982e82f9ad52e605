"""``atlas cluster`` against a real served node (``atlas serve`` in its own process),
with an API account made by ``atlas api-account create``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from atlas.cli import app
from atlas.cli.cluster import read_cluster_file, to_toml, toml_line
from atlas.model.config import ClusterConfig
from atlas.net.api_client import UsageError
from tests.conftest import RunningNode, free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "cluster.toml"

runner = CliRunner()

Cli = Callable[..., tuple[int, str]]


def account(data_dir: Path, permission: str = "config:write") -> dict[str, str]:
    r = runner.invoke(app, ["api-account", "create", str(data_dir), "--name", "cli",
                            "--permission", permission, "--json"])
    assert r.exit_code == 0, r.output
    created = json.loads(r.stdout)
    return {"ATLAS_CLIENT_ID": created["client_id"],
            "ATLAS_CLIENT_SECRET": created["client_secret"]}


@pytest.fixture
def cli(running_node: RunningNode) -> Cli:
    env = {"ATLAS_URL": running_node.url, "ATLAS_CA_FILE": str(running_node.ca_file),
           **account(running_node.data_dir)}

    def run(*args: str, **extra_env: str) -> tuple[int, str]:
        r = runner.invoke(app, ["cluster", *args], env={**env, **extra_env})
        return r.exit_code, r.output

    return run


def status(cli: Cli) -> dict[str, Any]:
    code, output = cli("status", "--json")
    assert code == 0, output
    body: dict[str, Any] = json.loads(output)
    return body


def test_apply_the_example_twice(cli: Cli) -> None:
    code, output = cli("apply", str(EXAMPLE))
    assert code == 0, output
    assert "Plan: create cluster support.example.com" in output
    assert "+ add traffic node 'asia-traffic1'" in output
    assert "prefixes: [10.30.0.0/16, 2001:db8:30::/48]" in output
    assert "Applied: saved as revision" in output
    first = status(cli)
    assert first["role"] == "primary" and first["site_hostname"] == "support.example.com"
    assert [n["name"] for n in first["traffic_nodes"]] == [
        "us-traffic1", "us-traffic2", "asia-traffic1"]
    revision = first["revision"]
    assert first["document"]["primary"]["guid"] == first["this_node"]["guid"]

    code, output = cli("apply", str(EXAMPLE))
    assert code == 0, output
    assert "No changes" in output and "Applied" not in output
    assert status(cli)["revision"] == revision

    # the same file after an edit made elsewhere: the plan names the field
    code, output = cli("edit-node", "us-traffic1", "--capacity", "5", "--region", "Virginia")
    assert code == 0, output
    code, output = cli("apply", str(EXAMPLE), "--dry-run")
    assert code == 0, output
    assert "~ change traffic node 'us-traffic1'" in output
    assert "capacity: 5 → 1000" in output and "region: 'Virginia' → 'US East'" in output
    assert "Dry run: nothing applied." in output
    assert status(cli)["revision"] == revision + 1
    code, output = cli("apply", str(EXAMPLE))
    assert code == 0 and "(0 to add, 1 to change, 0 to remove)" in output
    assert status(cli)["revision"] == revision + 2


def test_export_then_apply_is_a_no_op(cli: Cli, tmp_path: Path) -> None:
    assert cli("apply", str(EXAMPLE))[0] == 0
    revision = status(cli)["revision"]
    code, output = cli("export")
    assert code == 0, output
    exported = ClusterConfig.from_toml(output)
    assert exported.traffic_nodes == ClusterConfig.from_toml(EXAMPLE.read_text()).traffic_nodes
    assert exported.primary.guid == status(cli)["this_node"]["guid"]
    target = tmp_path / "exported.toml"
    code, output = cli("export", "-o", str(target))
    assert code == 0 and f"Wrote revision {revision}" in output
    code, output = cli("apply", str(target))
    assert code == 0 and "No changes" in output, output
    assert status(cli)["revision"] == revision


def test_a_bad_file_is_exit_2_naming_line_and_field(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "cluster.toml"
    text = EXAMPLE.read_text().replace('"10.20.0.0/255.255.0.0"', '"10.20.0.0/33"')
    bad.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "10.20.0.0/33" in t)
    code, output = cli("apply", str(bad))
    assert code == 2, output
    assert f"{bad}:{line}: traffic_nodes.1.prefixes:" in output
    assert status(cli)["role"] == "standalone"  # nothing applied

    bad.write_text(EXAMPLE.read_text().replace("[selection]", "[selection\n"))
    code, output = cli("apply", str(bad))
    assert code == 2 and "not valid TOML" in output and "line" in output, output
    code, output = cli("apply", str(tmp_path / "missing.toml"))
    assert code == 2 and "cannot read it" in output


def test_commands_and_exit_codes(cli: Cli, running_node: RunningNode) -> None:
    code, output = cli("create", "--site-hostname", "support.example.test",
                       "--public", "master1.example.test:443")
    assert code == 0 and "Created cluster support.example.test" in output, output
    code, output = cli("create", "--site-hostname", "support.example.test")
    assert code == 4 and "already the primary master" in output

    code, output = cli("add-node", "tokyo", "--public", "tokyo.example.test:443",
                       "--prefix", "10.30.0.0/16", "--timezone", "Asia/Tokyo",
                       "--region", "Asia")
    assert code == 0 and "saved as revision 2" in output and "Sync needed" in output, output
    code, output = cli("add-node", "TOKYO", "--public", "t2.example.test:443")
    assert code == 4 and "already used" in output
    code, output = cli("add-node", "lima", "--public", "10.0.0.1:443")
    assert code == 2 and "public.host" in output and "IP addresses are not supported" in output
    code, output = cli("edit-node", "nope", "--capacity", "3")
    assert code == 2 and "no traffic node named 'nope'" in output
    code, output = cli("set-method", "srv")
    assert code == 2 and "srv_name" in output
    code, output = cli("set-method", "timezone", "--fallback-limit", "3")
    assert code == 0, output

    code, output = cli("status")
    assert code == 0, output
    assert "tokyo" in output and "offline" in output and "support.example.test" in output

    code, output = cli("route", "--ip", "10.30.1.1", "--tz", "+09:00")
    assert code == 0, output
    assert "Rule:     fallback" in output and "tokyo: offline" in output
    assert "within the fallback limit of 3" in output
    code, output = cli("route", "--ip", "10.30.1.999")
    assert code == 2 and "ip:" in output

    code, output = cli("set-accepting", "tokyo", "off")
    assert code == 1 and "did not confirm" in output, output
    code, output = cli("set-accepting", "tokyo", "maybe")
    assert code == 2

    code, output = cli("sync")
    assert code == 4 and "pre-shared key" in output.lower(), output
    code, output = cli("history", "--limit", "5")
    assert code == 0 and "could not tell tokyo" in output, output

    read_only = account(running_node.data_dir, "config:read")
    code, output = cli("add-node", "x", "--public", "x.example.test", **read_only)
    assert code == 3 and "config:write" in output

    code, output = cli("remove-node", "tokyo")
    assert code == 0 and "Removed traffic node tokyo" in output
    code, output = cli("disable")
    assert code == 2 and "--yes" in output
    code, output = cli("disable", "--yes")
    assert code == 0 and "standalone again" in output, output
    assert status(cli)["role"] == "standalone"

    # whose fault: credentials, reachability, usage
    code, output = cli("status", ATLAS_CLIENT_SECRET="wrong")
    assert code == 3 and "refused" in output
    code, output = cli("status", ATLAS_URL=f"https://localhost:{free_port()}")
    assert code == 5 and "unreachable" in output
    code, output = cli("status", ATLAS_CA_FILE="")
    assert code == 5 and "--ca-file" in output
    code, output = cli("status", ATLAS_URL="")
    assert code == 2 and "--url" in output


# --- the file format, without a server -------------------------------------------------------


def test_export_format_round_trips(tmp_path: Path) -> None:
    config = ClusterConfig.from_toml(EXAMPLE.read_text())
    data = config.model_dump(mode="json")
    data["revision"] = 4
    data["primary"]["guid"] = "5ba00afaa07a4090b0e2d07edc6fe1bf"
    data["primary"]["internal"] = "m1.int.example.com:8443"
    data["traffic_nodes"][0]["region"] = 'Quote " and \\ back'
    data["selection"] = {"method": "anycast", "anycast_address": "2001:db8::10"}
    config = ClusterConfig.model_validate(data)
    text = to_toml(config, source="https://x")
    assert "revision" not in text.replace("at revision 4", "")
    assert "[[traffic_nodes]]" in text and 'public = "master1.support.example.com:443"' in text
    again = ClusterConfig.from_toml(text)
    assert again == config.model_copy(update={"revision": 0})
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert read_cluster_file(path) == again


def test_toml_line() -> None:
    text = EXAMPLE.read_text()
    lines = text.splitlines()

    def at(field: str) -> str:
        number = toml_line(text, field)
        assert number is not None, field
        return lines[number - 1]

    assert at("site_hostname").startswith("site_hostname =")
    assert at("primary.public").startswith("public = \"master1.")
    assert at("primary.internal") == "[primary]"  # absent key: its table
    assert at("backup.name") == 'name = "master2"'
    assert at("selection.method") == 'method = "timezone"'
    assert at("traffic_nodes.2.timezone") == 'timezone = "Asia/Tokyo"'
    assert at("traffic_nodes.1.public.port").startswith('public = "us-traffic2')
    assert toml_line(text, "traffic_nodes.7.name") is None


def test_read_cluster_file_names_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE.read_text().replace('name = "master2"', 'name = "MASTER1"')
                    .replace('timezone = "Asia/Tokyo"', 'timezone = "Asia/Tokio"'))
    with pytest.raises(UsageError) as caught:
        read_cluster_file(path)
    message = caught.value.message
    assert "traffic_nodes.2.timezone" in message and f"{path}:" in message
