"""Representative accounts against a real SQLite file: checks, uniqueness, sign-in, lockout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from atlas.store import lockout, passwords
from atlas.store import representatives as reps
from atlas.store.db import Database
from atlas.store.representatives import RepresentativeError

PASSWORD = "a fine password"


@pytest.fixture(autouse=True)
def fast_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap argon2id parameters: these tests check many passwords, not the hash's cost."""
    monkeypatch.setattr(passwords, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    d = Database(tmp_path / "atlas.db")
    yield d
    d.close()


def rows(db: Database) -> list[dict[str, Any]]:
    return [dict(r) for r in db.all("SELECT * FROM representatives ORDER BY id")]


def test_create_and_read_back(db: Database) -> None:
    rep = reps.create(db, "  alice  ", "  Alice from Support ", PASSWORD)
    assert (rep.username, rep.display_name, rep.enabled) == ("alice", "Alice from Support", True)
    assert (rep.failed_logins, rep.locked_until) == (0, 0.0)
    assert reps.get(db, rep.id) == rep
    assert reps.get_by_username(db, "ALICE") == rep  # usernames ignore case
    assert reps.get(db, rep.id + 1) is None and reps.get_by_username(db, "bob") is None
    reps.create(db, "Bob", "Bob", PASSWORD)
    assert [r.username for r in reps.list_all(db)] == ["alice", "Bob"]


def test_password_is_stored_only_as_an_argon2_hash(db: Database) -> None:
    rep = reps.create(db, "alice", "Alice", PASSWORD)
    (row,) = rows(db)
    assert PASSWORD not in str(row) and row["password_hash"].startswith("$argon2id$")
    assert "password" not in repr(rep)


@pytest.mark.parametrize(
    ("username", "display_name", "password", "field", "message"),
    [
        ("", "Alice", PASSWORD, "username", "must not be empty"),
        ("   ", "Alice", PASSWORD, "username", "must not be empty"),
        ("a" * 65, "Alice", PASSWORD, "username", "must be at most 64 characters"),
        ("-alice", "Alice", PASSWORD, "username", "must start with a letter or digit"),
        ("al ice", "Alice", PASSWORD, "username", "may contain only letters"),
        ("alice<script>", "Alice", PASSWORD, "username", "may contain only letters"),
        ("älice", "Alice", PASSWORD, "username", "may contain only letters"),
        ("alice\n", "Alice", PASSWORD, "username", None),  # stripped: fine
        ("alice", "", PASSWORD, "display_name", "must not be empty"),
        ("alice", " \t ", PASSWORD, "display_name", "must not be empty"),
        ("alice", "A" * 101, PASSWORD, "display_name", "must be at most 100 characters"),
        ("alice", "Al\nice", PASSWORD, "display_name", "control or invisible formatting"),
        ("alice", "Al\x1b[31mice", PASSWORD, "display_name", "control or invisible"),
        ("alice", "Al\u202eice", PASSWORD, "display_name", "control or invisible"),
        ("alice", "Alice", "", "password", "must be at least 8 characters"),
        ("alice", "Alice", "seven77", "password", "must be at least 8 characters"),
        ("alice", "Alice", "p" * 1025, "password", "must be at most 1024 characters"),
    ],
)
def test_create_refuses_bad_values_and_stores_nothing(
    db: Database, username: str, display_name: str, password: str, field: str,
    message: str | None,
) -> None:
    if message is None:
        assert reps.create(db, username, display_name, password).username == "alice"
        return
    with pytest.raises(RepresentativeError) as caught:
        reps.create(db, username, display_name, password)
    assert caught.value.field == field and message in caught.value.message
    assert rows(db) == []


@pytest.mark.parametrize("name", ["a", "A" * 64, "alice.b_c-d@example.com", "0day", "Zoë 🙂‍💻"])
def test_good_values(db: Database, name: str) -> None:
    username = name if name.isascii() else "zoe"
    rep = reps.create(db, username, name, "x" * 8)
    assert rep.username == username and rep.display_name == name


@pytest.mark.parametrize("again", ["alice", "ALICE", " Alice "])
def test_duplicate_username_is_refused_regardless_of_case(db: Database, again: str) -> None:
    reps.create(db, "alice", "Alice", PASSWORD)
    with pytest.raises(RepresentativeError) as caught:
        reps.create(db, again, "Another Alice", PASSWORD)
    assert (caught.value.field, caught.value.message) == ("username", "is already taken")
    assert len(rows(db)) == 1


def test_update_changes_only_what_is_given(db: Database) -> None:
    rep = reps.create(db, "alice", "Alice", PASSWORD)
    before = rows(db)[0]
    assert reps.update(db, rep.id, display_name=" Alice B ").display_name == "Alice B"
    assert rows(db)[0]["password_hash"] == before["password_hash"]
    assert not reps.update(db, rep.id, enabled=False).enabled
    assert reps.update(db, rep.id, enabled=True).enabled
    reps.update(db, rep.id, password="another password")
    assert reps.authenticate(db, "alice", "another password", 0.0) is not None
    assert reps.authenticate(db, "alice", PASSWORD, 0.0) is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"display_name": ""}, "display_name"),
        ({"display_name": "x" * 101}, "display_name"),
        ({"display_name": "Good", "password": "short"}, "password"),
        ({"password": "fine password", "display_name": "\x00"}, "display_name"),
    ],
)
def test_update_refuses_bad_values_and_stores_nothing(
    db: Database, changes: dict[str, Any], field: str
) -> None:
    rep = reps.create(db, "alice", "Alice", PASSWORD)
    before = rows(db)
    with pytest.raises(RepresentativeError) as caught:
        reps.update(db, rep.id, **changes)
    assert caught.value.field == field
    assert rows(db) == before


def test_update_of_an_unknown_id(db: Database) -> None:
    with pytest.raises(RepresentativeError) as caught:
        reps.update(db, 42, enabled=False)
    assert caught.value.field == "id"


def test_authenticate(db: Database) -> None:
    rep = reps.create(db, "alice", "Alice", PASSWORD)
    assert reps.authenticate(db, "alice", PASSWORD, 0.0) == rep
    assert reps.authenticate(db, " Alice ", PASSWORD, 0.0) == rep
    assert reps.authenticate(db, "alice", PASSWORD + "x", 0.0) is None
    assert reps.authenticate(db, "nobody", PASSWORD, 0.0) is None
    assert reps.authenticate(db, "a" * 10_000, PASSWORD, 0.0) is None


def test_disabled_account_cannot_authenticate(db: Database) -> None:
    rep = reps.create(db, "alice", "Alice", PASSWORD)
    reps.update(db, rep.id, enabled=False)
    assert reps.authenticate(db, "alice", PASSWORD, 0.0) is None
    # wrong passwords for a disabled account do not count towards a lock
    for _ in range(10):
        reps.authenticate(db, "alice", "wrong password", 0.0)
    assert rows(db)[0]["failed_logins"] == 0
    reps.update(db, rep.id, enabled=True)
    assert reps.authenticate(db, "alice", PASSWORD, 0.0) is not None


def test_lockout_after_repeated_failures(db: Database) -> None:
    reps.create(db, "alice", "Alice", PASSWORD)
    now = 1000.0
    for _ in range(lockout.LOCK_AFTER - 1):
        assert reps.authenticate(db, "alice", "wrong password", now) is None
    assert reps.authenticate(db, "alice", PASSWORD, now) is not None  # resets the count
    for _ in range(lockout.LOCK_AFTER):
        assert reps.authenticate(db, "alice", "wrong password", now) is None
    rep = reps.get_by_username(db, "alice")
    assert rep is not None and rep.failed_logins == lockout.LOCK_AFTER
    assert rep.locked_until == now + lockout.FIRST_LOCK and rep.locked(now)
    # while locked even the right password is refused, and attempts do not count
    assert reps.authenticate(db, "alice", PASSWORD, now + 29) is None
    assert reps.authenticate(db, "alice", "wrong password", now + 29) is None
    assert rows(db)[0]["failed_logins"] == lockout.LOCK_AFTER
    # once the lock has passed, the right password works and clears the count
    rep = reps.authenticate(db, "alice", PASSWORD, now + lockout.FIRST_LOCK)
    assert rep is not None and (rep.failed_logins, rep.locked_until) == (0, 0.0)
    assert (rows(db)[0]["failed_logins"], rows(db)[0]["locked_until"]) == (0, 0)


def test_lock_doubles_and_a_new_password_lifts_it(db: Database) -> None:
    rep = reps.create(db, "alice", "Alice", PASSWORD)
    now = 1000.0
    for _ in range(lockout.LOCK_AFTER):
        reps.authenticate(db, "alice", "wrong password", now)
    now += lockout.FIRST_LOCK
    reps.authenticate(db, "alice", "wrong password", now)
    locked = reps.get(db, rep.id)
    assert locked is not None and locked.locked_until == now + 2 * lockout.FIRST_LOCK
    reps.update(db, rep.id, password="a new password")
    assert reps.authenticate(db, "alice", "a new password", now) is not None


def test_lockout_of_one_account_leaves_others_alone(db: Database) -> None:
    reps.create(db, "alice", "Alice", PASSWORD)
    reps.create(db, "bob", "Bob", PASSWORD)
    for _ in range(lockout.LOCK_AFTER):
        reps.authenticate(db, "alice", "wrong password", 0.0)
    assert reps.authenticate(db, "alice", PASSWORD, 1.0) is None
    assert reps.authenticate(db, "bob", PASSWORD, 1.0) is not None


def test_web_lockout_module_still_offers_the_account_rules() -> None:
    from atlas.web.login import lockout as web_lockout

    assert web_lockout.after_failure is lockout.after_failure
    assert web_lockout.locked is lockout.locked and web_lockout.MAX_LOCK == lockout.MAX_LOCK


def test_the_store_does_not_depend_on_the_web_layer() -> None:
    import subprocess
    import sys

    code = ("import sys, atlas.store.representatives; "
            "sys.exit(any(m.startswith('atlas.web') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
