"""API accounts and their bearer tokens, against a real SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest

from atlas.store.api_accounts import (
    TOKEN_LIFETIME_SECONDS,
    ApiAccountError,
    Permission,
    TokenState,
    account_for_token,
    authenticate_client,
    check_token,
    create_account,
    expand,
    get_account_by_client_id,
    issue_token,
    list_accounts,
    parse_permissions,
    revoke_account,
)
from atlas.store.db import Database


@pytest.fixture
def db(tmp_path: Path) -> Database:
    d = Database(tmp_path / "atlas.db")
    yield d
    d.close()


def test_permissions_imply_their_read_counterpart() -> None:
    assert expand(frozenset({Permission.COMMAND_FULL})) == {
        Permission.COMMAND_FULL, Permission.COMMAND_READ}
    assert expand(frozenset({Permission.CONFIG_WRITE})) == {
        Permission.CONFIG_WRITE, Permission.CONFIG_READ}
    assert expand(frozenset({Permission.CONFIG_READ})) == {Permission.CONFIG_READ}


def test_parse_permissions_names_the_bad_one() -> None:
    assert parse_permissions(["command:full", " config:read "]) == {
        Permission.COMMAND_FULL, Permission.CONFIG_READ}
    with pytest.raises(ApiAccountError, match="'command:write' is unknown; allowed: command:read"):
        parse_permissions(["command:write"])
    with pytest.raises(ApiAccountError, match="at least one"):
        parse_permissions([])


def test_create_and_authenticate(db: Database) -> None:
    new = create_account(db, "  Monitoring  ", frozenset({Permission.COMMAND_READ}))
    acc = new.account
    assert acc.name == "Monitoring"
    assert len(acc.client_id) == 32 and acc.active
    assert authenticate_client(db, acc.client_id, new.client_secret) == acc
    assert authenticate_client(db, acc.client_id, new.client_secret + "x") is None
    assert authenticate_client(db, "0" * 32, new.client_secret) is None
    assert get_account_by_client_id(db, acc.client_id) == acc
    assert list_accounts(db) == [acc]
    # the secret is stored only as a hash
    row = db.one("SELECT secret_hash FROM api_accounts")
    assert row is not None and new.client_secret not in row["secret_hash"]


@pytest.mark.parametrize(
    ("name", "message"),
    [("", "must not be empty"), ("   ", "must not be empty"), ("x" * 65, "at most 64"),
     ("a\x00b", "printable")],
)
def test_bad_names_are_refused(db: Database, name: str, message: str) -> None:
    with pytest.raises(ApiAccountError, match=message):
        create_account(db, name, frozenset({Permission.COMMAND_READ}))


def test_token_lifecycle(db: Database) -> None:
    new = create_account(db, "ci", frozenset({Permission.CONFIG_WRITE}))
    token, expires_in = issue_token(db, new.account, now=1000.0)
    assert expires_in == TOKEN_LIFETIME_SECONDS == 3600
    assert account_for_token(db, token, now=1001.0) == new.account
    assert check_token(db, token, now=1001.0).state is TokenState.VALID
    expired = check_token(db, token, now=1000.0 + 3600)
    assert expired.state is TokenState.EXPIRED and expired.account is None
    assert check_token(db, "forged-" + token, now=1001.0).state is TokenState.UNKNOWN
    # the token itself is not stored
    assert db.one("SELECT 1 FROM api_tokens WHERE token_hash = ?", (token,)) is None


def test_issuing_sweeps_expired_tokens(db: Database) -> None:
    acc = create_account(db, "ci", frozenset({Permission.CONFIG_READ})).account
    old, _ = issue_token(db, acc, now=0.0)
    issue_token(db, acc, now=10_000.0)
    assert check_token(db, old, now=10_000.0).state is TokenState.UNKNOWN
    assert len(db.all("SELECT * FROM api_tokens")) == 1


def test_revoke_kills_tokens_and_credentials(db: Database) -> None:
    new = create_account(db, "ci", frozenset({Permission.COMMAND_FULL}))
    token, _ = issue_token(db, new.account)
    assert revoke_account(db, new.account.id) is True
    assert revoke_account(db, new.account.id) is False
    assert check_token(db, token).state is TokenState.UNKNOWN
    assert authenticate_client(db, new.account.client_id, new.client_secret) is None
    acc = get_account_by_client_id(db, new.account.client_id)
    assert acc is not None and not acc.active and acc.revoked_at is not None
