"""``atlas customer`` / ``atlas rep``: bad options end at once with one line and exit 2."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from atlas.cli import app

runner = CliRunner()
SITE = ["--site", "https://localhost:1"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("ATLAS_SITE", "ATLAS_SESSION_KEY", "ATLAS_PASSWORD", "ATLAS_CA_FILE",
                "ATLAS_DNS"):
        monkeypatch.delenv(var, raising=False)


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stderr


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(("args", "says"), [
    (["customer", *SITE, "--key", "1234567", "--tz-offset", "+25:00"], "--tz-offset"),
    (["customer", *SITE, "--key", "1234567", "--tz-offset", "Mars/Olympus"], "--tz-offset"),
    (["customer", *SITE, "--key", "1234567", "--source-address", "nonsense"],
     "--source-address 'nonsense': not an IP address"),
    (["customer", *SITE, "--key", "1234567", "--source-address", "192.0.2.1"],
     "not an address of this machine"),
    (["customer", *SITE], "--key is required"),
    (["customer", *SITE, "--key", "   "], "--key is required"),
    (["customer", *SITE, "--key", "1" * 40], "--key"),
    (["customer", "--key", "1234567"], "--site is required"),
    (["customer", "--site", "http://plain.example", "--key", "1"], "TLS is required"),
    (["customer", *SITE, "--key", "1", "--size", "huge"], "size 'huge'"),
    (["customer", *SITE, "--key", "1", "--dns", "dns.example"], "DNS server"),
    (["customer", *SITE, "--key", "1", "--ca-file", "/nonexistent/ca.pem"], "--ca-file"),
    (["customer", *SITE, "--key", "1", "--chat", " "], "--chat"),
    (["rep", *SITE], "--user is required"),
    (["rep", *SITE, "--user", "alice", "--show-my-screen-seconds", "3"],
     "--show-my-screen-seconds goes with --show-my-screen"),
])
def test_usage_errors(args: list[str], says: str) -> None:
    code, err = run(*args)
    assert code == 2
    assert says in one_line(err)


def test_rep_without_a_password_and_without_a_terminal() -> None:
    code, err = run("rep", *SITE, "--user", "alice")
    assert code == 2
    assert "ATLAS_PASSWORD" in one_line(err)


@pytest.mark.skipif(bool(os.environ.get("DISPLAY")), reason="a display exists here")
def test_desktop_source_without_a_display() -> None:
    code, err = run("customer", *SITE, "--key", "1234567", "--source", "desktop")
    assert code == 2
    assert "no display" in one_line(err) or "mss" in err


def test_unreachable_site_is_exit_5() -> None:
    code, err = run("customer", "--site", "https://127.0.0.1:1", "--key", "1234567")
    assert code == 5
    assert "cannot reach 127.0.0.1:1: connection refused" in one_line(err)


def test_help_lists_the_cluster_test_options() -> None:
    for command in ("customer", "rep"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0
        for option in ("--source-address", "--tz-offset", "--ca-file", "--dns", "--json",
                       "--duration", "--frames"):
            assert option in result.output
