"""``atlas psk``: set and show the pre-shared key on a data directory; bad keys refused
with nothing stored."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from atlas.cli import app
from atlas.node.datadir import DataDir
from atlas.node.init import init_node

runner = CliRunner()
KEY = "a long shared secret 42"


@pytest.fixture
def node(tmp_path: Path) -> Path:
    root = tmp_path / "node"
    init_node(root, name="n1", public="n1.example.test:4443", listen="127.0.0.1",
              admin_password="correct horse battery")
    return root


def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None
        ) -> tuple[int, str]:
    r = runner.invoke(app, ["psk", *args], input=stdin, env={"ATLAS_PSK": "", **(env or {})})
    return r.exit_code, r.output


def test_set_from_stdin_then_status(node: Path) -> None:
    code, output = run("status", str(node))
    assert code == 1 and "No pre-shared key is set" in output
    code, output = run("set", str(node), "--stdin", stdin=KEY + "\n")
    assert code == 0, output
    assert KEY not in output
    secret = DataDir(node).secrets_dir / "psk"
    assert secret.read_text() == KEY
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    code, output = run("status", str(node))
    assert code == 0 and "A pre-shared key is set (changed 20" in output
    assert KEY not in output


def test_set_from_the_environment(node: Path) -> None:
    code, output = run("set", str(node), env={"ATLAS_PSK": KEY})
    assert code == 0, output
    assert (DataDir(node).secrets_dir / "psk").read_text() == KEY


@pytest.mark.parametrize(("key", "problem"), [
    ("", "Enter the pre-shared key."),
    ("short", "at least 12 characters"),
    ("x" * 257, "at most 256 characters"),
    ("tab\tinside the key", "must not contain control characters"),
])
def test_bad_keys_are_refused_and_nothing_is_stored(node: Path, key: str, problem: str) -> None:
    code, output = run("set", str(node), "--stdin", stdin=key + "\n")
    assert code == 2 and problem in output, output
    assert not (DataDir(node).secrets_dir / "psk").exists()


def test_no_key_and_no_terminal(node: Path) -> None:
    code, output = run("set", str(node))
    assert code == 2 and "use --stdin or $ATLAS_PSK" in output


def test_not_a_node(tmp_path: Path) -> None:
    code, output = run("set", str(tmp_path / "nowhere"), "--stdin", stdin=KEY + "\n")
    assert code == 2 and "no such directory" in output
    (tmp_path / "empty").mkdir()
    code, output = run("status", str(tmp_path / "empty"))
    assert code == 2
