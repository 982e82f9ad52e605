"""``atlas user create|list|set-password|disable|enable`` on a node's data directory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from typer.testing import CliRunner

from atlas.cli import app, users
from atlas.node.init import init_node
from atlas.store import lockout, passwords
from atlas.store import representatives as reps
from atlas.store.db import Database

runner = CliRunner()
PASSWORD = "rep password 1"
NEW_PASSWORD = "rep password 2"


@pytest.fixture(autouse=True)
def fast_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap argon2id parameters: these tests check many passwords, not the hash's cost."""
    monkeypatch.setattr(passwords, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024))


@pytest.fixture(autouse=True)
def no_password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATLAS_PASSWORD", raising=False)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "node"
    init_node(root, name="n1", public="n1.example.test:4443", listen="127.0.0.1",
              admin_password="correct horse battery")
    return root


@pytest.fixture
def db(data_dir: Path) -> Iterator[Database]:
    d = Database(data_dir / "atlas.db")
    yield d
    d.close()


def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> tuple[
        int, str]:
    r = runner.invoke(app, ["user", *args], input=stdin, env=env)
    return r.exit_code, r.output


def flat(text: str) -> str:
    return " ".join(text.split())


def rows(db: Database) -> list[dict[str, Any]]:
    return [dict(r) for r in db.all("SELECT * FROM representatives ORDER BY id")]


def create(data_dir: Path, username: str = "alice", display_name: str = "Alice",
           password: str = PASSWORD) -> tuple[int, str]:
    return run("create", str(data_dir), "--username", username, "--display-name",
               display_name, "--password-stdin", stdin=password + "\n")


# --- create, with each source of the password ----------------------------------------


def test_create_with_password_stdin(data_dir: Path, db: Database) -> None:
    code, output = create(data_dir, display_name="Alice from Support")
    assert code == 0, output
    assert "Created representative alice (Alice from Support)" in output
    assert PASSWORD not in output
    assert reps.authenticate(db, "alice", PASSWORD, 0.0) is not None
    assert PASSWORD not in str(rows(db))


def test_create_with_password_stdin_windows_line_end(data_dir: Path, db: Database) -> None:
    code, _ = run("create", str(data_dir), "--username", "alice", "--display-name", "A",
                  "--password-stdin", stdin=PASSWORD + "\r\nignored\n")
    assert code == 0
    assert reps.authenticate(db, "alice", PASSWORD, 0.0) is not None


def test_create_with_password_from_environment(data_dir: Path, db: Database) -> None:
    code, output = run("create", str(data_dir), "--username", "alice", "--display-name", "A",
                       env={"ATLAS_PASSWORD": PASSWORD})
    assert code == 0 and PASSWORD not in output
    assert reps.authenticate(db, "alice", PASSWORD, 0.0) is not None


def test_password_stdin_wins_over_the_environment(data_dir: Path, db: Database) -> None:
    code, _ = run("create", str(data_dir), "--username", "alice", "--display-name", "A",
                  "--password-stdin", stdin=NEW_PASSWORD + "\n",
                  env={"ATLAS_PASSWORD": PASSWORD})
    assert code == 0
    assert reps.authenticate(db, "alice", NEW_PASSWORD, 0.0) is not None


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if stdin were a terminal (CliRunner's stdin is not one)."""
    monkeypatch.setattr(users, "_can_prompt", lambda: True)


@pytest.mark.usefixtures("terminal")
def test_create_with_password_prompt(data_dir: Path, db: Database) -> None:
    code, output = run("create", str(data_dir), "--username", "alice", "--display-name", "A",
                       stdin=f"{PASSWORD}\n{PASSWORD}\n")
    assert code == 0, output
    assert "Password" in output and PASSWORD not in output  # the prompt does not echo
    assert reps.authenticate(db, "alice", PASSWORD, 0.0) is not None


@pytest.mark.usefixtures("terminal")
def test_prompt_without_an_answer_stores_nothing(data_dir: Path, db: Database) -> None:
    code, output = run("create", str(data_dir), "--username", "alice", "--display-name", "A",
                       stdin="")
    assert code == 2 and "no password given" in flat(output)
    code, output = run("create", str(data_dir), "--username", "alice", "--display-name", "A",
                       stdin=f"{PASSWORD}\n{PASSWORD}x\n")
    assert code == 2 and "do not match" in output and PASSWORD not in output
    assert rows(db) == []


def test_no_prompt_without_a_terminal(data_dir: Path, db: Database) -> None:
    code, output = run("create", str(data_dir), "--username", "alice", "--display-name", "A",
                       stdin=f"{PASSWORD}\n{PASSWORD}\n")
    assert code == 2 and "stdin is not a terminal" in flat(output)
    assert "Password:" not in output
    assert rows(db) == []


# --- create: bad values --------------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "display_name", "password", "message"),
    [
        ("", "Alice", PASSWORD, "--username must not be empty"),
        ("u" * 65, "Alice", PASSWORD, "--username must be at most 64 characters"),
        ("al ice", "Alice", PASSWORD, "--username may contain only letters"),
        ("-alice", "Alice", PASSWORD, "must start with a letter or digit"),
        ("alice", "", PASSWORD, "--display-name must not be empty"),
        ("alice", "d" * 101, PASSWORD, "--display-name must be at most 100 characters"),
        ("alice", "esc\x1b[2Jape", PASSWORD, "--display-name must not contain control"),
        ("alice", "Alice", "", "password must be at least 8 characters"),
        ("alice", "Alice", "short7!", "password must be at least 8 characters"),
        ("alice", "Alice", "p" * 1025, "password must be at most 1024 characters"),
    ],
)
def test_create_refuses_bad_values(
    data_dir: Path, db: Database, username: str, display_name: str, password: str,
    message: str,
) -> None:
    code, output = create(data_dir, username, display_name, password)
    assert code == 2
    assert message in flat(output)
    if password:
        assert password not in output
    assert rows(db) == []


@pytest.mark.parametrize("again", ["alice", "ALICE"])
def test_create_refuses_a_taken_username(data_dir: Path, db: Database, again: str) -> None:
    assert create(data_dir)[0] == 0
    code, output = create(data_dir, again, "Another", NEW_PASSWORD)
    assert code == 2 and f"--username '{again}' is already taken" in flat(output)
    assert [r["display_name"] for r in rows(db)] == ["Alice"]


def test_missing_or_foreign_data_dir(tmp_path: Path) -> None:
    code, output = run("list", str(tmp_path / "nope"))
    assert code == 2 and "no such directory" in output
    code, output = create(tmp_path)
    assert code == 2 and "not an Atlas node" in output
    assert not (tmp_path / "atlas.db").exists()


# --- list --------------------------------------------------------------------------------


def test_list(data_dir: Path, db: Database) -> None:
    code, output = run("list", str(data_dir))
    assert code == 0 and "No representatives" in output
    create(data_dir, "alice", "Alice [bold]from[/] Support")
    create(data_dir, "bob", "Bob")
    run("disable", str(data_dir), "bob")
    code, output = run("list", str(data_dir))
    assert code == 0
    lines = output.splitlines()
    alice = next(line for line in lines if "alice" in line)
    bob = next(line for line in lines if line.strip().startswith("bob"))
    assert "Alice [bold]from[/]" in alice and "enabled" in alice  # shown as is, not markup
    assert "disabled" in bob
    assert PASSWORD not in output and "argon2" not in output
    code, output = run("list", str(data_dir), "--json")
    listed = json.loads(output)
    assert [(r["username"], r["enabled"], r["locked_until"]) for r in listed] == [
        ("alice", True, None), ("bob", False, None)]
    assert all("password" not in key for r in listed for key in r)


def test_list_shows_a_lock(data_dir: Path, db: Database) -> None:
    import time

    create(data_dir)
    now = time.time()
    for _ in range(lockout.LOCK_AFTER):
        reps.authenticate(db, "alice", "wrong password", now)
    code, output = run("list", str(data_dir))
    assert code == 0
    assert "Locked until" in output
    alice = next(line for line in output.splitlines() if "alice" in line)
    assert "Z" in alice.split("enabled")[1]  # a time like 2024-05-01 13:25Z
    listed = json.loads(run("list", str(data_dir), "--json")[1])
    assert listed[0]["locked_until"] == pytest.approx(now + lockout.FIRST_LOCK)


# --- set-password, disable, enable -------------------------------------------------------


def test_set_password_replaces_it_and_lifts_a_lock(data_dir: Path, db: Database) -> None:
    create(data_dir)
    for _ in range(lockout.LOCK_AFTER):
        reps.authenticate(db, "alice", "wrong password", 1000.0)
    code, output = run("set-password", str(data_dir), "Alice", "--password-stdin",
                       stdin=NEW_PASSWORD + "\n")
    assert code == 0, output
    assert "Changed the password of representative alice" in output
    assert NEW_PASSWORD not in output
    assert reps.authenticate(db, "alice", NEW_PASSWORD, 1000.0) is not None
    assert reps.authenticate(db, "alice", PASSWORD, 1000.0) is None


@pytest.mark.usefixtures("terminal")
def test_set_password_refuses_bad_values(data_dir: Path, db: Database) -> None:
    create(data_dir)
    before = rows(db)
    code, output = run("set-password", str(data_dir), "alice", "--password-stdin",
                       stdin="short\n")
    assert code == 2 and "password must be at least 8 characters" in flat(output)
    assert "short" not in output.replace("at least", "")
    code, output = run("set-password", str(data_dir), "alice",
                       stdin=f"{NEW_PASSWORD}\nsomething else\n")
    assert code == 2 and "do not match" in output and NEW_PASSWORD not in output
    assert rows(db) == before


def test_disable_and_enable(data_dir: Path, db: Database) -> None:
    create(data_dir)
    code, output = run("disable", str(data_dir), "alice")
    assert code == 0 and "Representative alice disabled" in output
    assert reps.authenticate(db, "alice", PASSWORD, 0.0) is None
    code, output = run("disable", str(data_dir), "alice")
    assert code == 0 and "was already disabled" in output
    code, output = run("enable", str(data_dir), "ALICE")
    assert code == 0 and "Representative alice enabled" in output
    assert reps.authenticate(db, "alice", PASSWORD, 0.0) is not None


@pytest.mark.parametrize(
    "args", [["set-password", "--password-stdin"], ["disable"], ["enable"]]
)
def test_unknown_user(data_dir: Path, db: Database, args: list[str]) -> None:
    command, *options = args
    code, output = run(command, str(data_dir), "nobody", *options, stdin=PASSWORD + "\n")
    assert code == 2 and "no representative named 'nobody'" in flat(output)
    assert PASSWORD not in output
    assert rows(db) == []
