"""``atlas`` itself: the version, and help without a command."""

from __future__ import annotations

from typer.testing import CliRunner

from atlas import SOFTWARE_VERSION
from atlas.cli import app

runner = CliRunner()


def test_version() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output == f"atlas {SOFTWARE_VERSION}\n"


def test_no_command_shows_the_commands() -> None:
    r = runner.invoke(app, [])
    assert "cluster" in r.output and "demo" in r.output and "customer" in r.output
